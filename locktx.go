package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// TryLockTx acquires name in mode inside the caller's own transaction tx,
// if that is possible at once; otherwise it returns a *LockedError, as
// [Client.TryLock] does, and tx is unchanged and still usable. The lock
// exists only if tx commits: enqueue a job and lock it, or create a record
// and lock it, in one atomic step.
//
// The handle's life cycle:
//
//   - From the return of TryLockTx until tx ends, the lock is pending: tx
//     sees it, others do not, and other grants of the name wait for tx to
//     end (on SQLite every writer does). Err is nil, and Fence and ReleaseTx
//     work with tx itself. Release deletes the hold inside tx. Upgrade,
//     Downgrade, SetPayload, and Fence or ReleaseTx with another
//     transaction, return ErrTxOpen.
//   - When tx commits, the lock is an ordinary one, held under the client's
//     lease, whose heartbeat already renews it (there is nothing to start).
//   - When tx rolls back, the lock never existed: Done closes and Err
//     returns ErrNotCommitted; Release returns nil.
//
// The client learns how tx ended by asking the database (a record that tx
// deletes), in the background and whenever a method needs to know, so even
// a commit whose outcome the caller did not see (a connection lost during
// COMMIT) is settled.
//
// On PostgreSQL and MySQL, run tx at READ COMMITTED
// (sql.TxOptions{Isolation: sql.LevelReadCommitted}): PostgreSQL refuses
// other levels, and MySQL at REPEATABLE READ refuses whenever tx's snapshot
// is older than the name's last grant. Keep tx short: it holds the name, and
// on SQLite the database's write lock, until it ends. If the client's lease
// is lost while tx is open, the lock is lost as any other.
func (c *Client) TryLockTx(ctx context.Context, tx *sql.Tx, name string, mode Mode, opts ...LockOption) (*Lock, error) {
	if tx == nil {
		return nil, errors.New("sqldlm: TryLockTx needs a transaction, got nil")
	}
	return c.tryLockIn(ctx, stdTx(tx), name, mode, opts)
}

// tryLockIn is TryLockTx in the caller's transaction tx of any driver.
func (c *Client) tryLockIn(ctx context.Context, tx callerTx, name string, mode Mode, opts []LockOption) (*Lock, error) {
	o, err := checkRequest(name, mode, opts)
	if err != nil {
		return nil, opError("trylock in transaction", name, err)
	}
	start := time.Now()
	c.hooks.AcquireStarted(name, mode)
	lk, err := c.tryLockTx(ctx, tx, name, mode, o.payload)
	if err != nil {
		c.hooks.AcquireFailed(name, mode, time.Since(start), err)
		return nil, opError("trylock in transaction", name, err)
	}
	c.hooks.AcquireGranted(name, mode, time.Since(start))
	return lk, nil
}

func (c *Client) tryLockTx(ctx context.Context, tx callerTx, name string, mode Mode, payload string) (*Lock, error) {
	for attempt := 0; ; attempt++ {
		l, err := c.currentLease(ctx)
		if err != nil {
			return nil, err
		}
		req := rand.Int64()
		if err := c.dialect.CreatePending(ctx, c.db, l.id, req); err != nil {
			c.settlePending(l, name, req) // the record may exist if only the answer was lost
			return nil, fmt.Errorf("record the request: %w", err)
		}
		res, err := c.acquireIn(ctx, tx, &dialect.AcquireParams{
			Name: name, LeaseID: l.id, RequestID: req, Mode: mode.stored(), Payload: payload, LockDelay: c.cfg.LockDelay,
		})
		if err != nil {
			// The grant may have been made in tx and may yet commit: settle it.
			c.settlePending(l, name, req)
			if errors.Is(err, dialect.ErrIsolation) {
				how := "sql.TxOptions{Isolation: sql.LevelReadCommitted}"
				if tx.std == nil {
					how = "pgx.TxOptions{IsoLevel: pgx.ReadCommitted}"
				}
				return nil, fmt.Errorf("run the transaction at READ COMMITTED (%s): %w", how, err)
			}
			return nil, err
		}
		if res.Status != dialect.Granted {
			c.settlePending(l, name, req)
		}
		switch res.Status {
		case dialect.Granted:
			lk := &Lock{c: c, lease: l, name: name, mode: mode, token: res.Token, done: make(chan struct{}), granted: time.Now(),
				taken: latestTakeover(res.TookOver), payload: payload, tx: tx, txReq: req}
			if !l.add(lk) {
				// The lease ended as the grant was made: a commit would leave
				// a hold of a dead lease, which counts for nothing.
				return nil, fmt.Errorf("the lease ended as it was granted: %w", ErrLost)
			}
			c.reportTakeover(name, mode, res.Token, res.TookOver)
			c.logger.Debug("sqldlm: lock granted in transaction", "lock_name", name, "mode", mode.String(), "token", res.Token, "lease_id", l.id)
			// After Close has begun no goroutine starts: the lock is then
			// released with the lease, and needs no watching.
			c.goStart(lk.watchTx)
			return lk, nil
		case dialect.LeaseLost:
			l.end(ErrLost, "the database no longer holds the lease")
			if attempt == 0 {
				continue // once more, under a new lease
			}
			return nil, ErrLost
		case dialect.Blocked:
			b := res.Blocker
			return nil, &LockedError{Name: name, Owner: b.Owner, Mode: modeOf(b.Mode), ExpiresIn: b.ExpiresIn, WaitersAhead: b.WaitersAhead}
		default:
			return nil, fmt.Errorf("unexpected outcome %d", res.Status)
		}
	}
}

// settlePending finds out, in the background, how the transaction that
// made request req ended, and withdraws the request (deleting its hold) if
// that transaction committed. It covers a request whose outcome the caller
// never learnt (an error), one that was refused (whose record it deletes),
// and a pending lock released before its transaction was seen to end.
func (c *Client) settlePending(l *lease, name string, req int64) {
	c.janitor.add(&task{
		what: "settle a request made in a transaction",
		run: func(ctx context.Context) error {
			out, err := c.dialect.PendingOutcome(ctx, c.db, l.id, req)
			switch {
			case err != nil:
				return err
			case out == dialect.TxOpen:
				return errTxStillOpen
			case out == dialect.TxCommitted:
				return c.withdraw(ctx, l, name, req)
			}
			return nil
		},
		until: l.live,
	})
}

var errTxStillOpen = errors.New("the transaction is still open")

// txState reports what is known of the acquiring transaction: whether the
// lock is still pending, asking the database when it is.
func (l *Lock) txState(ctx context.Context) (pending bool, err error) {
	l.mu.Lock()
	tx, req := l.tx, l.txReq
	l.mu.Unlock()
	if !tx.isSet() {
		return false, nil
	}
	out, err := l.c.dialect.PendingOutcome(ctx, l.c.db, l.lease.id, req)
	if err != nil {
		return true, fmt.Errorf("sqldlm: %q: find out whether its transaction committed: %w", l.name, err)
	}
	return l.settle(out), nil
}

// settle records the acquiring transaction's outcome; it reports whether
// the lock is still pending.
func (l *Lock) settle(out dialect.TxOutcome) bool {
	switch out {
	case dialect.TxOpen:
		return true
	case dialect.TxCommitted:
		l.mu.Lock()
		l.tx = callerTx{}
		l.mu.Unlock()
	case dialect.TxNotCommitted:
		l.mu.Lock()
		l.tx = callerTx{}
		l.dropped = true
		l.mu.Unlock()
		l.lease.remove(l)
		if l.finish(ErrNotCommitted) {
			l.c.hooks.Released(l.name, l.Mode(), time.Since(l.granted))
			l.c.logger.Debug("sqldlm: transaction that acquired the lock did not commit", "lock_name", l.name)
		}
	}
	return false
}

// watchTx polls until the acquiring transaction has ended (or the lock or
// the client did), so that a rollback closes Done.
func (l *Lock) watchTx() {
	wait := newExpBackoff(5*time.Millisecond, time.Second)
	for {
		if !sleepUntil(wait.next(), l.c.closed, l.lease.ended) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.c.cfg.cleanupTimeout())
		pending, err := l.txState(ctx)
		cancel()
		if err != nil {
			l.c.logger.Debug("sqldlm: checking the acquiring transaction failed", "lock_name", l.name, "error", err)
		} else if !pending {
			return
		}
	}
}

// settled returns nil once the acquiring transaction has committed (or for
// a lock not acquired in one), ErrTxOpen while it is open, and the lock's
// error once it is over.
func (l *Lock) settled(ctx context.Context) error {
	pending, err := l.txState(ctx)
	if err != nil {
		return err
	}
	if pending {
		return fmt.Errorf("%w (lock %q)", ErrTxOpen, l.name)
	}
	return l.Err()
}

// settledOrIn is settled, except that a lock pending in tx itself can be
// used in tx.
func (l *Lock) settledOrIn(ctx context.Context, tx callerTx) error {
	l.mu.Lock()
	in := l.tx.isSet() && l.tx.same(tx)
	l.mu.Unlock()
	if in {
		return l.Err()
	}
	return l.settled(ctx)
}

// isPending reports whether the lock was acquired in a transaction not yet
// seen to end.
func (l *Lock) isPending() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tx.isSet()
}

// releasePending releases a lock acquired in a transaction not yet seen to
// end. It returns false when that transaction turns out to have committed:
// the caller then releases as usual.
func (l *Lock) releasePending(ctx context.Context) bool {
	// While the acquiring transaction is open, delete the hold inside it:
	// whether it then commits or rolls back, the lock is free. This comes
	// before asking whether the transaction ended, which needs another
	// connection (on SQLite, the write lock the open transaction holds; under
	// load that question could fail, and the hold outlived the commit until
	// the janitor's turn).
	released := func() bool {
		l.lease.remove(l)
		l.c.settlePending(l.lease, l.name, l.txReq)
		if l.finish(ErrReleased) {
			l.c.hooks.Released(l.name, l.Mode(), time.Since(l.granted))
		}
		return true
	}
	l.mu.Lock()
	tx := l.tx
	l.mu.Unlock()
	if tx.isSet() {
		_, err := l.c.releaseIn(ctx, tx, l.ref())
		if err == nil {
			return released()
		}
		if !errors.Is(err, sql.ErrTxDone) {
			l.c.logger.Info("sqldlm: release in the acquiring transaction failed; releasing after it ends", "lock_name", l.name, "error", err)
		}
	}
	// The transaction has ended (or the delete in it failed): if it
	// committed, the caller releases as usual; if it is open or not known,
	// the hold is deleted once it has ended, if it committed anyway.
	pending, err := l.txState(ctx)
	if err == nil && !pending {
		return errors.Is(l.Err(), ErrNotCommitted)
	}
	return released()
}
