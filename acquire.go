package sqldlm

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// Lock acquires name in mode, waiting until it is granted or ctx ends. ctx
// bounds the wait only, not how long the lock is then held. Waiters of a
// name are served in arrival order, except that compatible (shared)
// requests go together; a waiting exclusive request keeps later shared
// requests out. A waiter that gives up (ctx ended) leaves nothing behind.
//
// It returns ErrInvalidName for a bad name, ctx's error when ctx ends first,
// and ErrClosed when the client is closed.
func (c *Client) Lock(ctx context.Context, name string, mode Mode, opts ...LockOption) (*Lock, error) {
	l, err := c.acquire(ctx, name, mode, true, opts)
	return l, opError("lock", name, err)
}

// TryLock acquires name in mode if that is possible at once. Otherwise it
// returns a *LockedError (matching ErrLocked) that says who holds it. If the
// database cannot be reached it fails at once too, after one retry (which
// settles an answer lost on the way), with an error that matches
// dialect.ErrConnection; ctx bounds a statement that gets no answer.
//
// As with sync.Mutex.TryLock, a program that polls with TryLock usually
// wants Lock with a deadline instead: it keeps its place in the queue.
func (c *Client) TryLock(ctx context.Context, name string, mode Mode, opts ...LockOption) (*Lock, error) {
	l, err := c.acquire(ctx, name, mode, false, opts)
	return l, opError("trylock", name, err)
}

// Do acquires name in mode (waiting as Lock does), runs fn, and releases the
// lock, whatever fn returns, and also when fn panics (the panic then goes
// on). The ctx given to fn is cancelled when the lock is lost (its cause is
// ErrLost) or the client closes (ErrClosed), so fn can stop work that is no
// longer protected. ctx bounds the wait and is fn's parent; the release
// after fn is not cancelled by ctx, and waits for the database at most as
// long as Release does.
//
// Do returns fn's error; if the lock was lost while fn ran, the error also
// matches ErrLost, since fn's work may have overlapped another holder's.
// A lock released by Client.Close while fn ran is not reported as lost.
func (c *Client) Do(ctx context.Context, name string, mode Mode, fn func(ctx context.Context) error, opts ...LockOption) (err error) {
	l, err := c.Lock(ctx, name, mode, opts...)
	if err != nil {
		return err
	}
	// Deferred, so that it runs when fn panics too.
	defer func() {
		if relErr := l.Release(context.WithoutCancel(ctx)); errors.Is(relErr, ErrLost) {
			err = errors.Join(err, fmt.Errorf("sqldlm: %q was lost while fn ran: %w", name, ErrLost))
		}
	}()
	return l.whileHeld(ctx, fn)
}

// whileHeld calls fn with a child of ctx that is cancelled when l ends:
// its cause is ErrLost, or ErrClosed when the client closed.
func (l *Lock) whileHeld(ctx context.Context, fn func(ctx context.Context) error) error {
	fnCtx, cancel := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-l.Done():
			cause := ErrLost
			if l.closedByClient() {
				cause = ErrClosed
			}
			cancel(cause)
		case <-fnCtx.Done():
		}
	}()
	defer func() {
		cancel(nil)
		<-watched
	}()
	return fn(fnCtx)
}

// checkRequest validates a request's arguments and applies its options.
func checkRequest(name string, mode Mode, opts []LockOption) (lockOptions, error) {
	var o lockOptions
	if err := ValidateName(name); err != nil {
		return o, err
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := ValidatePayload(o.payload); err != nil {
		return o, err
	}
	if mode != Shared && mode != Exclusive {
		return o, fmt.Errorf("sqldlm: invalid mode %v: use sqldlm.Shared or sqldlm.Exclusive", mode)
	}
	return o, nil
}

func (c *Client) acquire(ctx context.Context, name string, mode Mode, wait bool, opts []LockOption) (*Lock, error) {
	o, err := checkRequest(name, mode, opts)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	c.hooks.AcquireStarted(name, mode)
	for {
		req := request{c: c, name: name, mode: mode, id: rand.Int64(), wait: wait, payload: o.payload}
		token, l, taken, err := req.run(ctx)
		if err == nil {
			lk := &Lock{c: c, lease: l, name: name, mode: mode, token: token, done: make(chan struct{}), granted: time.Now(),
				taken: latestTakeover(taken), payload: o.payload}
			if l.add(lk) {
				waited := time.Since(start)
				c.reportTakeover(name, mode, token, taken)
				c.hooks.AcquireGranted(name, mode, waited)
				c.logger.Debug("sqldlm: lock granted", "lock_name", name, "mode", mode.String(), "token", token, "lease_id", l.id, "waited", waited)
				return lk, nil
			}
			// The lease ended (or its local deadline passed) while the grant
			// was in flight: the grant is worthless, and goes with the
			// lease. Lock goes on waiting, as a new request under a new
			// lease; TryLock reports the loss.
			err = fmt.Errorf("the lease ended as it was granted: %w", ErrLost)
			if wait && ctx.Err() == nil && !c.isClosed() {
				c.logger.Debug("sqldlm: lease ended as the lock was granted, trying again", "lock_name", name, "lease_id", l.id)
				select {
				case <-l.ended: // at once, or when its deadline timer fires
					continue
				case <-ctx.Done():
					err = ctx.Err()
				case <-c.closed:
					err = ErrClosed
				}
			}
		}
		c.hooks.AcquireFailed(name, mode, time.Since(start), err)
		return nil, err
	}
}

// request is one Lock, TryLock or Upgrade call in progress.
type request struct {
	c            *Client
	name         string
	mode         Mode
	id           int64
	wait         bool
	upgradeToken int64  // for Upgrade
	lease        *lease // for Upgrade: the lock's lease (never replaced)
	payload      string
	// For Upgrade: run gave up on a request that may have left a waiter
	// row or a grant; the caller withdraws it (keeping its hold, which
	// replaced the lock's shared hold).
	giveUp bool
}

// run retries the acquire statement until it is granted, refused, or ctx
// ends. It returns the token, the lease the grant belongs to, and the holds
// of dead leases the grant took over.
func (r *request) run(ctx context.Context) (int64, *lease, []dialect.TakenHold, error) {
	c := r.c
	wake, unregister := c.waiters.register(r.name, r.id)
	defer unregister()
	backoff := newBackoff(c)
	var enqueuedOn *lease    // the lease a waiter row or an unseen grant of this request may exist under
	connFailures := 0        // TryLock: attempts that failed on the connection
	var blocked *LockedError // what the last attempt found in the way
	cleaned := false         // the client's own pending cleanups of the name were run
	abandon := func(cause error) (int64, *lease, []dialect.TakenHold, error) {
		if blocked != nil && ctx.Err() != nil && errors.Is(cause, ctx.Err()) {
			cause = &WaitError{Err: cause, Blocker: blocked}
		}
		if enqueuedOn != nil {
			if r.upgradeToken != 0 {
				r.giveUp = true // withdrawn by the upgrade, which may adopt its grant
			} else {
				c.abandon(enqueuedOn, r.name, r.id)
			}
		}
		return 0, nil, nil, cause
	}
	for {
		if err := ctx.Err(); err != nil {
			return abandon(err)
		}
		if c.isClosed() {
			return abandon(ErrClosed)
		}
		l := r.lease
		if l == nil {
			var err error
			if l, err = c.currentLease(ctx); err != nil {
				if r.wait && ctx.Err() == nil && transientLeaseError(err) {
					// Lock waits: a lease the database could not create in
					// time (unreachable, or slow to accept a connection)
					// is asked for again.
					c.logger.Debug("sqldlm: creating a lease failed, retrying", "lock_name", r.name, "error", err)
					if _, err := backoff.sleep(ctx, wake, 0, -1); err != nil {
						return abandon(err)
					}
					continue
				}
				return abandon(err)
			}
		}
		if enqueuedOn != nil && enqueuedOn != l {
			c.abandon(enqueuedOn, r.name, r.id) // the old lease's waiter row is void
			enqueuedOn = nil
		}
		if r.wait {
			enqueuedOn = l // any attempt may leave a waiter row or an unseen grant
		}
		sent := time.Now()
		res, err := c.dialect.Acquire(ctx, c.db, &dialect.AcquireParams{
			Name: r.name, LeaseID: l.id, RequestID: r.id, Mode: r.mode.stored(),
			Enqueue: r.wait, UpgradeToken: r.upgradeToken, Payload: r.payload, LockDelay: c.cfg.LockDelay,
		})
		backoff.cost = time.Since(sent)
		if err != nil {
			if ctx.Err() != nil {
				enqueuedOn = l // the outcome is unknown: withdraw whatever it did
				return abandon(ctx.Err())
			}
			if dialect.IsRetryable(err) || errors.Is(err, dialect.ErrConnection) {
				// Same request id: a retry returns a grant the lost answer carried.
				enqueuedOn = l
				if !r.wait && errors.Is(err, dialect.ErrConnection) {
					// TryLock fails at once: one retry settles a lost
					// answer; a second failure means the database cannot
					// be reached, and waiting for it is Lock's job.
					if connFailures++; connFailures > 1 {
						return abandon(fmt.Errorf("sqldlm: acquire %q: %w", r.name, err))
					}
				}
				c.logger.Debug("sqldlm: acquire failed, retrying", "lock_name", r.name, "error", err)
				v, err := backoff.sleep(ctx, wake, 0, -1)
				if err != nil {
					return abandon(err)
				}
				if r.handedOver(ctx, l, v) {
					return v.token, l, nil, nil // handed over meanwhile
				}
				continue
			}
			enqueuedOn = l
			return abandon(fmt.Errorf("sqldlm: acquire %q: %w", r.name, err))
		}
		switch res.Status {
		case dialect.Granted:
			return res.Token, l, res.TookOver, nil
		case dialect.LeaseLost:
			l.end(ErrLost, "the database no longer holds the lease")
			if r.lease != nil { // an upgrade cannot move to a new lease
				return 0, nil, nil, ErrLost
			}
			enqueuedOn = nil
			blocked = nil // what it saw was seen under the lost lease
			continue
		case dialect.NotHeld:
			return abandon(ErrLost)
		case dialect.UpgradeConflict:
			return abandon(ErrUpgradeConflict)
		case dialect.Withdrawn:
			// Only a withdrawal of this very request answers this: there is
			// nothing left to withdraw.
			return 0, nil, nil, fmt.Errorf("sqldlm: acquire %q: the request was withdrawn by this client's cleanup; ask again", r.name)
		}
		b := res.Blocker
		blocked = &LockedError{Name: r.name, Owner: b.Owner, Mode: modeOf(b.Mode), ExpiresIn: b.ExpiresIn, WaitersAhead: b.WaitersAhead}
		if !cleaned && r.upgradeToken == 0 && c.janitor.cleanNow(ctx, l.id, r.name) {
			// What is in the way may be the client's own: a hold whose
			// release, or a request whose withdrawal, was left to the
			// janitor (the database could not be reached when it was due).
			// It has just run: ask again, once.
			cleaned = true
			continue
		}
		if !r.wait {
			// An earlier attempt whose answer was lost (enqueuedOn is set)
			// may still be waiting in the server and grant later: withdraw
			// it, so that it cannot.
			return abandon(blocked)
		}
		// Wake up when this request reaches the head of the queue (a
		// release in this process, or a notification), when the holder's
		// lease would expire if not renewed, or at the next poll, which
		// comes sooner the nearer the request is to the head. An expiry of
		// zero or less is unknown (a dead holder's hold pinned by its
		// fenced transaction): the usual backoff applies.
		var expiry time.Duration
		if b.Owner != "" && b.ExpiresIn > 0 {
			expiry = b.ExpiresIn + time.Millisecond
		}
		select {
		case <-l.ended:
			continue
		default:
		}
		v, err := backoff.sleep(ctx, wake, expiry, b.WaitersAhead)
		if err != nil {
			return abandon(err)
		}
		if r.handedOver(ctx, l, v) {
			// A release handed the name over to this request, under the
			// lease it waits with, and that grant has committed: no need
			// to ask again.
			return v.token, l, nil, nil
		}
	}
}

// handedOver reports whether wake-up v hands the name over to this request
// under lease l, as the database confirms. Any session can send a
// notification, so the grant one carries is believed only after a read of
// the hold it names; one that is not confirmed (forged, or void by now)
// counts as a plain wake-up, and the next attempt asks the database.
func (r *request) handedOver(ctx context.Context, l *lease, v wakeup) bool {
	if !v.grants(l) {
		return false
	}
	n, ok := r.c.dialect.(dialect.Notifier)
	if !ok {
		return false
	}
	confirmed, err := n.ConfirmGrant(ctx, r.c.db, dialect.Wakeup{Name: r.name, LeaseID: l.id, RequestID: r.id, Token: v.token})
	switch {
	case err != nil:
		r.c.logger.Debug("sqldlm: confirming a handed-over grant failed, asking again", "lock_name", r.name, "error", err)
		return false
	case !confirmed:
		r.c.logger.Info("sqldlm: ignored a notification of a grant the database does not hold", "lock_name", r.name,
			"token", v.token, "lease_id", l.id)
		return false
	}
	return true
}

// reportTakeover logs, at info, a grant that took a name over from dead
// holders, and tells the hooks: an operator may want to know that a holder
// died (or was broken) without releasing.
func (c *Client) reportTakeover(name string, mode Mode, token int64, taken []dialect.TakenHold) {
	if len(taken) == 0 {
		return
	}
	c.hooks.TookOver(name, mode, len(taken))
	for _, t := range taken {
		how := "expired"
		if t.Broken {
			how = "broken"
		}
		c.logger.Info("sqldlm: took over a lock from a dead holder", "lock_name", name, "mode", mode.String(), "token", token,
			"previous_owner", t.Owner, "previous_lease_id", t.LeaseID, "previous_token", t.Token, "previous_lease", how,
			"expired_at", t.ExpiredAt)
	}
}
