// Package testknobs holds the types of sqldlm's per-client test seams:
// how sqldlm's own tests (the randomized test's child processes, the
// uncertain-outcome scenarios) observe one client's internals without a
// public API and without global state. A test hands a *Knobs to one client
// it creates, as part of its Config.Hooks value (a Hooks that also has a
// Knobs method: see Carrier), and only that client uses it. The package is
// internal, so no program outside sqldlm can implement Carrier: a normal
// client has no knobs, and the library only checks for them.
package testknobs

import "time"

// LeaseEnd describes a lease as it ended.
type LeaseEnd struct {
	LeaseID int64
	// Deadline is the local trust deadline (monotonic): the time at which
	// the client would have declared the lease lost without a renewal.
	Deadline time.Time
	Err      error // why it ended: sqldlm.ErrLost or sqldlm.ErrClosed
}

// Knobs are one client's test seams. Give each client a Knobs of its own:
// sqldlm.New fills in LeaseOf.
type Knobs struct {
	// LeaseEnded, set by the test, is called synchronously, once per lease
	// of the client, when the lease ends (after its locks learned of it,
	// before logs and hooks run).
	LeaseEnded func(LeaseEnd)
	// LeaseOf, set by sqldlm.New, returns the id of the lease a
	// *sqldlm.Lock, *sqldlm.Leadership, *sqldlm.Permit or
	// *sqldlm.Membership of the client belongs to.
	LeaseOf func(handle any) int64
	// LockOf, set by sqldlm.New, returns the *sqldlm.Lock a
	// *sqldlm.Leadership or a *sqldlm.Permit of the client stands on.
	LockOf func(handle any) any
}

// Carrier is implemented by a Config.Hooks value that carries knobs;
// sqldlm.New looks for it.
type Carrier interface {
	Knobs() *Knobs
}
