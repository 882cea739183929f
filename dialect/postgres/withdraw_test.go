package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// onePool returns a pool of one connection on f's schema and that
// connection's backend pid, so that a test can see what the statement it
// runs there waits for.
func (f *fixture) onePool() (*sql.DB, int) {
	f.t.Helper()
	db := f.reopen()
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	var pid int
	require.NoError(f.t, db.QueryRowContext(f.ctx, `SELECT pg_backend_pid()`).Scan(&pid))
	return db, pid
}

// waitingOrDone polls until backend pid waits for a row lock (for the
// transaction holding the row, or for its place in the row's queue), or
// done reports that its statement has returned.
func (f *fixture) waitingOrDone(pid int, done *atomic.Bool, what string) {
	f.t.Helper()
	require.Eventually(f.t, func() bool {
		if done.Load() {
			return true
		}
		var waiting bool
		err := f.db.QueryRowContext(f.ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks
			WHERE pid = $1 AND NOT granted AND locktype IN ('transactionid', 'tuple'))`, pid).Scan(&waiting)
		return err == nil && waiting
	}, 10*time.Second, time.Millisecond, "%s neither waits for a lock nor returned", what)
}

// lockNameRow starts a transaction on another connection that holds the
// name's row FOR UPDATE (creating the row if missing), as an open
// sqldlm_acquire_tx transaction of the name does.
func (f *fixture) lockNameRow(name string) *sql.Tx {
	f.t.Helper()
	_, err := f.db.ExecContext(f.ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES ($1, 0, clock_timestamp())
		ON CONFLICT (name) DO NOTHING`, name)
	require.NoError(f.t, err)
	tx := f.begin(f.reopen(), sql.LevelReadCommitted)
	var n int
	require.NoError(f.t, tx.QueryRowContext(f.ctx, `SELECT count(*) FROM (SELECT 1 FROM sqldlm_locks WHERE name = $1 FOR UPDATE) s`, name).Scan(&n))
	require.Equal(f.t, 1, n)
	return tx
}

// requestRows counts the waiter and hold rows of request (lease, id).
func (f *fixture) requestRows(lease, id int64) int {
	f.t.Helper()
	return f.count(f.db.DB, `SELECT (SELECT count(*) FROM sqldlm_waiters WHERE lease_id = $1 AND request_id = $2)
		+ (SELECT count(*) FROM sqldlm_holds WHERE lease_id = $1 AND request_id = $2)`, lease, id)
}

// TestLateAcquireAfterWithdrawal: a request's acquire statement waits in
// the server for the name's row (held by another transaction), its client
// gave up and its cancel request was lost, so the statement goes on; the
// client withdraws the request from another connection, retrying a lock
// timeout as its janitor does. Whatever the late statement returns, and in
// either order of the two waits, the request leaves no hold and no waiter
// row behind, a repeat of it is refused, and another lease is granted the
// name. For a free name (the fast path), a shared name (phase 2's grant),
// and a first enqueue behind a holder, and behind a holder and a waiter.
func TestLateAcquireAfterWithdrawal(t *testing.T) {
	t.Parallel()
	type setup func(f *fixture, name string) (p dialect.AcquireParams, others []int64)
	cases := map[string]setup{
		"FastPath": func(f *fixture, name string) (dialect.AcquireParams, []int64) {
			return dialect.AcquireParams{Name: name, Mode: dialect.Exclusive}, nil
		},
		"Phase2Grant": func(f *fixture, name string) (dialect.AcquireParams, []int64) {
			o := f.lease("o", time.Minute)
			f.grant(name, o, dialect.Shared)
			return dialect.AcquireParams{Name: name, Mode: dialect.Shared, Enqueue: true}, []int64{o}
		},
		"FirstEnqueueBehindHolder": func(f *fixture, name string) (dialect.AcquireParams, []int64) {
			o := f.lease("o", time.Minute)
			f.grant(name, o, dialect.Exclusive)
			return dialect.AcquireParams{Name: name, Mode: dialect.Exclusive, Enqueue: true}, []int64{o}
		},
		"FirstEnqueueBehindWaiters": func(f *fixture, name string) (dialect.AcquireParams, []int64) {
			o, q := f.lease("o", time.Minute), f.lease("q", time.Minute)
			f.grant(name, o, dialect.Exclusive)
			require.Equal(f.t, dialect.Blocked, f.acquire(dialect.AcquireParams{Name: name, LeaseID: q, Mode: dialect.Exclusive, Enqueue: true}).Status)
			return dialect.AcquireParams{Name: name, Mode: dialect.Shared, Enqueue: true}, []int64{o, q}
		},
	}
	for name, setup := range cases {
		for _, abandonFirst := range []bool{false, true} {
			order := "AcquireWaitsFirst"
			if abandonFirst {
				order = "AbandonWaitsFirst"
			}
			t.Run(name+"/"+order, func(t *testing.T) {
				t.Parallel()
				f := newFixture(t)
				p, others := setup(f, "n")
				w := f.lease("w", time.Minute)
				p.LeaseID, p.RequestID = w, rand.Int64()
				blocker := f.lockNameRow(p.Name)

				acqDB, acqPid := f.onePool()
				abDB, abPid := f.onePool()
				var acqDone, abDone atomic.Bool
				type outcome struct {
					res *dialect.AcquireResult
					err error
				}
				acquired := make(chan outcome, 1)
				startAcquire := func() {
					go func() {
						q := p
						res, err := f.d.Acquire(f.ctx, acqDB, &q) // never cancelled: its cancel request was lost
						acqDone.Store(true)
						acquired <- outcome{res, err}
					}()
					f.waitingOrDone(acqPid, &acqDone, "the late acquire")
				}
				abandoned := make(chan error, 1)
				startAbandon := func() {
					go func() {
						var err error
						for range 20 { // the janitor retries a lock timeout
							_, err = f.d.Abandon(f.ctx, abDB, &dialect.AbandonParams{Name: p.Name, LeaseID: w, RequestID: p.RequestID})
							if !errors.Is(err, dialect.ErrLockTimeout) {
								break
							}
						}
						abDone.Store(true)
						abandoned <- err
					}()
					f.waitingOrDone(abPid, &abDone, "the withdrawal")
				}
				if abandonFirst {
					startAbandon()
					startAcquire()
				} else {
					startAcquire()
					startAbandon()
				}
				require.NoError(t, blocker.Commit())

				got := <-acquired
				require.NoError(t, <-abandoned)
				if got.err != nil {
					require.ErrorIs(t, got.err, dialect.ErrLockTimeout, "the late acquire")
					t.Logf("the late acquire timed out waiting for a lock")
				} else {
					t.Logf("the late acquire returned status %d", got.res.Status)
					allowed := []dialect.AcquireStatus{dialect.Withdrawn}
					if !abandonFirst {
						allowed = append(allowed, dialect.Granted, dialect.Blocked)
					}
					require.Contains(t, allowed, got.res.Status)
				}
				require.Zero(t, f.requestRows(w, p.RequestID), "the withdrawn request left a hold or a waiter row")
				require.Equal(t, dialect.Withdrawn, f.acquire(p).Status, "a repeat of the withdrawn request")
				require.Zero(t, f.requestRows(w, p.RequestID))

				for _, o := range others {
					_, err := f.d.DeleteLease(f.ctx, f.db.DB, o)
					require.NoError(t, err)
				}
				f.grant(p.Name, f.lease("next", time.Minute), dialect.Exclusive)
			})
		}
	}
}

// TestAcquireLockWaitIsBounded: an acquire (and a withdrawal) waiting for a
// row lock held longer than a second fails with a lock timeout instead of
// waiting for as long as the lock is held; so does one in the caller's
// transaction (AcquireTx).
func TestAcquireLockWaitIsBounded(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	w := f.lease("w", time.Minute)
	f.lockNameRow("n") // held until the test ends
	ctx, cancel := context.WithTimeout(f.ctx, 8*time.Second)
	defer cancel()

	start := time.Now()
	_, err := f.d.Acquire(ctx, f.db.DB, &dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive})
	require.ErrorIs(t, err, dialect.ErrLockTimeout, "the acquire waited for the name's row until its context ended")
	require.Less(t, time.Since(start), 5*time.Second)

	start = time.Now()
	_, err = f.d.Abandon(ctx, f.db.DB, &dialect.AbandonParams{Name: "n", LeaseID: w, RequestID: rand.Int64()})
	require.ErrorIs(t, err, dialect.ErrLockTimeout, "the withdrawal waited for the name's row until its context ended")
	require.Less(t, time.Since(start), 5*time.Second)

	tx := f.begin(f.db.DB, sql.LevelReadCommitted)
	p := dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive}
	require.NoError(t, f.d.CreatePending(ctx, f.db.DB, p.LeaseID, p.RequestID))
	start = time.Now()
	_, err = f.d.AcquireTx(ctx, tx, &p)
	require.ErrorIs(t, err, dialect.ErrLockTimeout, "the acquire in the caller's transaction waited until its context ended")
	require.Less(t, time.Since(start), 5*time.Second)
}

// TestAcquireTxKeepsCallersLockTimeout: sqldlm_acquire's lock_timeout
// applies while it runs; the caller's transaction has its own setting
// again when AcquireTx returns.
func TestAcquireTxKeepsCallersLockTimeout(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	w := f.lease("w", time.Minute)
	show := func(tx *sql.Tx) string {
		var s string
		require.NoError(t, tx.QueryRowContext(f.ctx, `SHOW lock_timeout`).Scan(&s))
		return s
	}

	tx := f.begin(f.db.DB, sql.LevelReadCommitted)
	before := show(tx)
	require.Equal(t, dialect.Granted, f.acquireTx(tx, dialect.AcquireParams{Name: "a", LeaseID: w, Mode: dialect.Exclusive}).Status)
	require.Equal(t, before, show(tx), "the session's setting")
	require.NoError(t, tx.Commit())

	tx = f.begin(f.db.DB, sql.LevelReadCommitted)
	_, err := tx.ExecContext(f.ctx, `SET LOCAL lock_timeout = '7s'`)
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, f.acquireTx(tx, dialect.AcquireParams{Name: "b", LeaseID: w, Mode: dialect.Exclusive}).Status)
	require.Equal(t, "7s", show(tx), "the transaction's own setting")
	require.NoError(t, tx.Commit())
}

// TestFenceAndReleaseTxWithOldSnapshot: at REPEATABLE READ and
// SERIALIZABLE, a transaction whose snapshot predates the grant, or the
// lease's last renewal, must not report a hold that is held and live as
// lost: Fence and ReleaseTx return a serialization error (retry the
// transaction), and the retried transaction succeeds. A hold that is
// really gone still reads as false.
func TestFenceAndReleaseTxWithOldSnapshot(t *testing.T) {
	t.Parallel()
	for _, level := range []sql.IsolationLevel{sql.LevelRepeatableRead, sql.LevelSerializable} {
		t.Run(level.String(), func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			pool := f.reopen()
			// snapshot begins a transaction at level and takes its snapshot.
			snapshot := func() *sql.Tx {
				tx := f.begin(pool, level)
				f.count(tx, `SELECT count(*) FROM sqldlm_holds`)
				return tx
			}
			fence := func(tx *sql.Tx, ref *dialect.HoldRef) (bool, error) {
				return f.d.Fence(f.ctx, f.db.DB, tx, ref, time.Minute)
			}
			releaseTx := func(tx *sql.Tx, ref *dialect.HoldRef) (bool, error) {
				return f.d.ReleaseTx(f.ctx, f.db.DB, tx, ref)
			}
			requireRetry := func(ok bool, err error, what string) {
				t.Helper()
				require.ErrorIs(t, err, dialect.ErrSerialization, "%s: a held, live hold reported lost", what)
				require.False(t, ok)
			}

			t.Log("snapshot older than the grant")
			a := f.lease("a", time.Minute)
			txF, txR := snapshot(), snapshot()
			ref := &dialect.HoldRef{Name: "g", LeaseID: a, Token: f.grant("g", a, dialect.Exclusive)}
			ok, err := fence(txF, ref)
			requireRetry(ok, err, "Fence")
			ok, err = releaseTx(txR, ref)
			requireRetry(ok, err, "ReleaseTx")
			require.NoError(t, txF.Rollback())
			require.NoError(t, txR.Rollback())
			// The retried transactions succeed.
			txF = snapshot()
			ok, err = fence(txF, ref)
			require.NoError(t, err)
			require.True(t, ok)
			require.NoError(t, txF.Commit())
			txR = snapshot()
			ok, err = releaseTx(txR, ref)
			require.NoError(t, err)
			require.True(t, ok)
			require.NoError(t, txR.Commit())
			require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE token = $1`, ref.Token))

			t.Log("snapshot older than the lease's last renewal")
			ref = &dialect.HoldRef{Name: "r", LeaseID: a, Token: f.grant("r", a, dialect.Exclusive)}
			// The lease as it was just before its last renewal: about to expire.
			var oldExpiry time.Time
			require.NoError(t, f.db.QueryRowContext(f.ctx, `UPDATE sqldlm_leases SET expires_at = clock_timestamp() + interval '300 milliseconds'
				WHERE id = $1 RETURNING expires_at`, a).Scan(&oldExpiry))
			txF, txR = snapshot(), snapshot()
			renewed, err := f.d.RenewLease(f.ctx, f.db.DB, a)
			require.NoError(t, err)
			require.True(t, renewed)
			require.Eventually(t, func() bool { // the expiry in the snapshot has passed
				var past bool
				err := f.db.QueryRowContext(f.ctx, `SELECT $1::timestamptz < clock_timestamp()`, oldExpiry).Scan(&past)
				return err == nil && past
			}, 10*time.Second, 10*time.Millisecond)
			ok, err = fence(txF, ref)
			requireRetry(ok, err, "Fence")
			require.NoError(t, txF.Rollback()) // its lock of the hold would keep txR's delete waiting
			ok, err = releaseTx(txR, ref)      // its delete does not depend on the lease's expiry
			require.NoError(t, err)
			require.True(t, ok, "ReleaseTx: a held, live hold reported lost")
			require.NoError(t, txR.Rollback())
			txF = snapshot()
			ok, err = fence(txF, ref)
			require.NoError(t, err)
			require.True(t, ok)
			require.NoError(t, txF.Commit())

			t.Log("a hold released since the snapshot, which predates its grant")
			txF, txR = snapshot(), snapshot()
			ref = &dialect.HoldRef{Name: "l", LeaseID: a, Token: f.grant("l", a, dialect.Exclusive)}
			released, err := f.d.Release(f.ctx, f.db.DB, ref)
			require.NoError(t, err)
			require.True(t, released)
			ok, err = fence(txF, ref)
			require.NoError(t, err)
			require.False(t, ok)
			ok, err = releaseTx(txR, ref)
			require.NoError(t, err)
			require.False(t, ok)

			t.Log("a hold whose lease expired")
			e := f.lease("e", 300*time.Millisecond)
			ref = &dialect.HoldRef{Name: "e", LeaseID: e, Token: f.grant("e", e, dialect.Exclusive)}
			txF = snapshot()
			f.expire(e)
			ok, err = fence(txF, ref)
			require.NoError(t, err)
			require.False(t, ok)
		})
	}
}

// TestReapDeletesOldWithdrawalRecords: Reap deletes, up to its limit, the
// withdrawal records older than dialect.WithdrawnRetention, oldest first,
// also of live leases; younger ones stay.
func TestReapDeletesOldWithdrawalRecords(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	w := f.lease("w", time.Minute)
	ids := make([]int64, 4)
	for i := range ids {
		ids[i] = rand.Int64()
		_, err := f.d.Abandon(f.ctx, f.db.DB, &dialect.AbandonParams{Name: "n", LeaseID: w, RequestID: ids[i]})
		require.NoError(t, err)
	}
	// The first three are past the retention, the oldest first.
	for i, id := range ids[:3] {
		_, err := f.db.ExecContext(f.ctx, `UPDATE sqldlm_withdrawn SET withdrawn_at = clock_timestamp() - $1::bigint * interval '1 microsecond'
			WHERE lease_id = $2 AND request_id = $3`, (dialect.WithdrawnRetention + time.Duration(10-i)*time.Minute).Microseconds(), w, id)
		require.NoError(t, err)
	}
	left := func() []int64 {
		rows, err := f.db.QueryContext(f.ctx, `SELECT request_id FROM sqldlm_withdrawn WHERE lease_id = $1 ORDER BY withdrawn_at`, w)
		require.NoError(t, err)
		defer rows.Close()
		var out []int64
		for rows.Next() {
			var id int64
			require.NoError(t, rows.Scan(&id))
			out = append(out, id)
		}
		require.NoError(t, rows.Err())
		return out
	}
	_, err := f.d.Reap(f.ctx, f.db.DB, 2, time.Hour)
	require.NoError(t, err)
	require.Equal(t, ids[2:], left(), "the two oldest go first")
	_, err = f.d.Reap(f.ctx, f.db.DB, 2, time.Hour)
	require.NoError(t, err)
	require.Equal(t, ids[3:], left(), "a record within the retention stays")
	require.Equal(t, dialect.Withdrawn, f.acquire(dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: ids[3], Mode: dialect.Exclusive}).Status)
}
