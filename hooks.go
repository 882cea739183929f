package sqldlm

import "time"

// Hooks receives the client's events, for metrics or tracing (the package
// sqldlmprom implements it for Prometheus). Every method is called
// synchronously on the path it reports, so implementations must be fast and
// must never block: update counters, or hand off without waiting. They may
// be called from many goroutines at once.
//
// Embed NopHooks to implement only some methods.
type Hooks interface {
	// AcquireStarted: a Lock, TryLock or Upgrade call began.
	AcquireStarted(name string, mode Mode)
	// AcquireGranted: it was granted after waiting for waited.
	AcquireGranted(name string, mode Mode, waited time.Duration)
	// AcquireFailed: it ended without the lock (ErrLocked, a context
	// error, ErrClosed, a database error) after waited. A Lock that gave
	// up on its ctx while the name was held matches both the context error
	// and ErrLocked (a *WaitError).
	AcquireFailed(name string, mode Mode, waited time.Duration, err error)
	// TookOver: the grant just reported took the name over from holders
	// whose leases had died (expired or broken) without releasing it.
	TookOver(name string, mode Mode, previous int)
	// Released: a held lock was released after being held for held.
	Released(name string, mode Mode, held time.Duration)
	// LockLost: a held lock was lost (its lease was lost, or the database
	// disowned it) after being held for held.
	LockLost(name string, mode Mode, held time.Duration)
	// LeaseRenewed: a renewal succeeded; latency is its round trip.
	LeaseRenewed(latency time.Duration)
	// LeaseLost: the client's lease was lost, with locks locks on it.
	LeaseLost(locks int)
	// ReaperPass: the client's reaper deleted dead leases, their holds and
	// waiters, and idle lock rows.
	ReaperPass(leases, holds, waiters, idleLocks int)
	// MemberJoined: the client joined group.
	MemberJoined(group string)
	// MemberLeft: a membership of group ended, with err ErrLeft (Leave),
	// ErrLost (the lease was lost) or ErrClosed (Client.Close).
	MemberLeft(group string, err error)
	// Elected: the client was elected leader of election (Campaign, Lead)
	// with term. The leadership's end is reported as the release or loss
	// of its lock (ElectionPrefix + election).
	Elected(election string, term int64)
}

// NopHooks implements Hooks by doing nothing.
type NopHooks struct{}

func (NopHooks) AcquireStarted(string, Mode)                      {}
func (NopHooks) AcquireGranted(string, Mode, time.Duration)       {}
func (NopHooks) AcquireFailed(string, Mode, time.Duration, error) {}
func (NopHooks) TookOver(string, Mode, int)                       {}
func (NopHooks) Released(string, Mode, time.Duration)             {}
func (NopHooks) LockLost(string, Mode, time.Duration)             {}
func (NopHooks) LeaseRenewed(time.Duration)                       {}
func (NopHooks) LeaseLost(int)                                    {}
func (NopHooks) ReaperPass(int, int, int, int)                    {}
func (NopHooks) MemberJoined(string)                              {}
func (NopHooks) MemberLeft(string, error)                         {}
func (NopHooks) Elected(string, int64)                            {}

var _ Hooks = NopHooks{}
