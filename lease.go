package sqldlm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// A lease is the client's session in the database: one row, renewed by one
// heartbeat, that every lock the client holds hangs off. The database
// decides when the lease expires (its clock, its row); the client trusts
// the lease only until its local deadline: the monotonic time at which the
// last successful renewal was sent, plus the TTL, minus a safety margin
// (Config.trustFor). A renewal is executed by the server after it was sent,
// so the server's expiry is never earlier than the local deadline (clock
// rates agreeing to within the margin): the holder learns of a loss before
// anyone else can be granted its locks.
//
// A lost lease is never revived: the client opens a new one for later locks.
type lease struct {
	c  *Client
	id int64

	mu       sync.Mutex
	deadline time.Time // local monotonic trust deadline
	locks    map[*Lock]struct{}
	members  map[*Membership]struct{}
	err      error // why the lease ended: ErrLost or ErrClosed; nil while live
	ended    chan struct{}
	expiry   *time.Timer // fires at deadline
	kick     chan struct{}
}

// errSlowLease: the database answered the creation of a lease after its
// TTL, so the lease could not be trusted for any time at all.
var errSlowLease = errors.New("the database answered after the lease's TTL")

// transientLeaseError reports whether a lease could not be created for a
// reason that may pass (the database unreachable or slow): a waiting Lock
// asks again.
func transientLeaseError(err error) bool {
	return errors.Is(err, dialect.ErrConnection) || dialect.IsRetryable(err) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errSlowLease)
}

// newLease creates a lease row in the database, within ctx. The caller
// starts it (start) once it is the client's lease.
func (c *Client) newLease(ctx context.Context) (*lease, error) {
	l := &lease{
		c:       c,
		id:      rand.Int64(),
		locks:   map[*Lock]struct{}{},
		members: map[*Membership]struct{}{},
		ended:   make(chan struct{}),
		kick:    make(chan struct{}, 1),
	}
	// A serialization failure or deadlock (an application's
	// default_transaction_isolation of SERIALIZABLE makes them possible)
	// rolled the insert back: it is retried. The deadline counts from the
	// attempt that succeeded.
	var sent time.Time
	_, err := retryStatement(ctx, func() (struct{}, error) {
		sent = time.Now()
		return struct{}{}, c.dialect.CreateLease(ctx, c.db, &dialect.CreateLeaseParams{ID: l.id, Owner: c.cfg.Owner, TTL: c.cfg.TTL})
	})
	if err != nil {
		// The row may exist if only the answer was lost: delete it later.
		c.janitor.deleteLease(l.id, time.Now().Add(c.cfg.deleteLeaseFor()))
		return nil, fmt.Errorf("sqldlm: create lease: %w", err)
	}
	l.deadline = sent.Add(c.cfg.trustFor())
	if time.Now().After(l.deadline) {
		c.janitor.deleteLease(l.id, time.Now().Add(c.cfg.deleteLeaseFor()))
		return nil, fmt.Errorf("sqldlm: create lease: %w (%s)", errSlowLease, c.cfg.TTL)
	}
	return l, nil
}

// start arms the lease's deadline timer and starts its heartbeat. The
// caller holds c.mu and has checked that the client is not closing.
func (l *lease) start() {
	// The timer may fire before AfterFunc returns; checkDeadline and end
	// read l.expiry under l.mu, so it is set under l.mu too.
	l.mu.Lock()
	l.expiry = time.AfterFunc(time.Until(l.deadline), l.checkDeadline)
	l.mu.Unlock()
	l.c.logger.Debug("sqldlm: lease created", "lease_id", l.id)
	l.c.goLocked(l.heartbeat)
}

// endIfOverdue ends the lease (as its expiry timer would) if it has not
// ended but its local deadline has passed: the timer has not run yet (the
// process was paused, or the timer's goroutine is late). It reports
// whether it did.
func (l *lease) endIfOverdue() bool {
	l.mu.Lock()
	overdue := l.err == nil && !time.Now().Before(l.deadline)
	l.mu.Unlock()
	if overdue {
		l.checkDeadline()
	}
	return overdue
}

// checkDeadline runs when the local deadline may have passed.
func (l *lease) checkDeadline() {
	l.mu.Lock()
	if remaining := time.Until(l.deadline); remaining > 0 || l.err != nil {
		// Extended by a renewal since the timer was set (or already ended).
		if l.err == nil {
			l.expiry.Reset(remaining)
		}
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.end(ErrLost, "no renewal succeeded within the TTL")
}

// extend moves the local deadline after a renewal sent at sent succeeded.
// It reports false if the lease had already ended: a renewal that succeeds
// after the deadline revives nothing.
func (l *lease) extend(sent time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return false
	}
	if d := sent.Add(l.c.cfg.trustFor()); d.After(l.deadline) {
		l.deadline = d
	}
	return true
}

// add attaches a granted lock to the lease, unless the lease has ended (or
// its deadline passed while the grant was in flight).
func (l *lease) add(lk *Lock) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.trustedLocked() {
		return false
	}
	l.locks[lk] = struct{}{}
	return true
}

// addMember attaches a membership to the lease, as add does a lock.
func (l *lease) addMember(m *Membership) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.trustedLocked() {
		return false
	}
	l.members[m] = struct{}{}
	return true
}

// trustedLocked reports whether the lease has not ended and its deadline
// has not passed; the caller holds l.mu.
func (l *lease) trustedLocked() bool { return l.err == nil && time.Now().Before(l.deadline) }

func (l *lease) removeMember(m *Membership) {
	l.mu.Lock()
	delete(l.members, m)
	l.mu.Unlock()
}

func (l *lease) remove(lk *Lock) {
	l.mu.Lock()
	delete(l.locks, lk)
	l.mu.Unlock()
}

// closedByClient reports whether Client.Close ended the lease.
func (l *lease) closedByClient() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err == ErrClosed
}

// live reports whether the lease has not ended.
func (l *lease) live() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err == nil
}

// end ends the lease once: every lock on it becomes lost (or, when the
// client closes, released), the heartbeat stops, and the client will open a
// new lease for later locks. When the lease was lost, its row is deleted in
// the background: the database may still consider it live (the renewals may
// have succeeded without the client hearing of it).
func (l *lease) end(err error, why string) {
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return
	}
	l.err = err
	l.expiry.Stop()
	deadline := l.deadline
	locks := make([]*Lock, 0, len(l.locks))
	for lk := range l.locks {
		locks = append(locks, lk)
	}
	clear(l.locks)
	members := make([]*Membership, 0, len(l.members))
	for m := range l.members {
		members = append(members, m)
	}
	clear(l.members)
	close(l.ended)
	l.mu.Unlock()

	l.c.dropLease(l)
	// The locks learn first; only then do logs and hooks run, which may be
	// slow (a user's logger) and must not eat into the safety margin.
	lockErr := ErrLost
	if err == ErrClosed {
		lockErr = ErrReleased
	}
	var lost []*Lock
	for _, lk := range locks {
		if lk.finish(lockErr) && lockErr == ErrLost {
			lost = append(lost, lk)
		}
	}
	var ended []*Membership
	for _, m := range members {
		if m.finish(err) { // ErrLost or ErrClosed
			ended = append(ended, m)
		}
	}
	defer func() {
		for _, m := range ended {
			l.c.hooks.MemberLeft(m.ref.Group, err)
		}
	}()
	l.c.leaseEnded(l.id, deadline, err)
	if err == ErrLost {
		l.c.logger.Info("sqldlm: lease lost", "lease_id", l.id, "locks", len(locks), "reason", why)
		l.c.hooks.LeaseLost(len(locks))
		for _, lk := range lost {
			l.c.hooks.LockLost(lk.name, lk.Mode(), time.Since(lk.granted))
		}
		l.c.janitor.deleteLease(l.id, time.Now().Add(l.c.cfg.deleteLeaseFor()))
	}
}
