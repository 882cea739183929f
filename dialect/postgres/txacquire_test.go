package postgres_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// fixture is one test's migrated schema.
type fixture struct {
	t   *testing.T
	ctx context.Context
	d   dialect.Testable
	db  *testdb.DB
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return &fixture{t: t, ctx: ctx, d: postgres.Dialect().(dialect.Testable), db: testdb.OpenMigrated(t, testdb.Postgres)}
}

// reopen returns another pool on the same schema.
func (f *fixture) reopen() *sql.DB {
	f.t.Helper()
	return testdb.Reopen(f.t, f.db.Kind, f.db.DSN).DB
}

func (f *fixture) lease(owner string, ttl time.Duration) int64 {
	f.t.Helper()
	id := rand.Int64()
	require.NoError(f.t, f.d.CreateLease(f.ctx, f.db.DB, &dialect.CreateLeaseParams{ID: id, Owner: owner, TTL: ttl}))
	return id
}

func (f *fixture) acquire(p dialect.AcquireParams) *dialect.AcquireResult {
	f.t.Helper()
	if p.RequestID == 0 {
		p.RequestID = rand.Int64()
	}
	res, err := f.d.Acquire(f.ctx, f.db.DB, &p)
	require.NoError(f.t, err)
	return res
}

func (f *fixture) grant(name string, lease int64, mode dialect.Mode) int64 {
	f.t.Helper()
	res := f.acquire(dialect.AcquireParams{Name: name, LeaseID: lease, Mode: mode})
	require.Equal(f.t, dialect.Granted, res.Status, "grant %s to %d", name, lease)
	return res.Token
}

func (f *fixture) count(q dialect.Querier, query string, args ...any) int {
	f.t.Helper()
	var n int
	require.NoError(f.t, q.QueryRowContext(f.ctx, query, args...).Scan(&n))
	return n
}

// begin starts a transaction on db at level, rolled back at the end of the
// test unless it has ended.
func (f *fixture) begin(db *sql.DB, level sql.IsolationLevel) *sql.Tx {
	f.t.Helper()
	tx, err := db.BeginTx(f.ctx, &sql.TxOptions{Isolation: level})
	require.NoError(f.t, err)
	f.t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

// acquireTx records the request as pending, then makes it in tx.
func (f *fixture) acquireTx(tx *sql.Tx, p dialect.AcquireParams) *dialect.AcquireResult {
	f.t.Helper()
	if p.RequestID == 0 {
		p.RequestID = rand.Int64()
	}
	require.NoError(f.t, f.d.CreatePending(f.ctx, f.db.DB, p.LeaseID, p.RequestID))
	res, err := f.d.AcquireTx(f.ctx, tx, &p)
	require.NoError(f.t, err)
	return res
}

// outcome asks PendingOutcome with a short deadline: it must never wait
// for the transaction it asks about.
func (f *fixture) outcome(lease, request int64) dialect.TxOutcome {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	out, err := f.d.PendingOutcome(ctx, f.db.DB, lease, request)
	require.NoError(f.t, err)
	return out
}

func (f *fixture) pending(lease, request int64) int {
	f.t.Helper()
	return f.count(f.db.DB, `SELECT count(*) FROM sqldlm_pending WHERE lease_id = $1 AND request_id = $2`, lease, request)
}

// expire waits until lease has expired by the server's clock.
func (f *fixture) expire(lease int64) {
	f.t.Helper()
	require.Eventually(f.t, func() bool {
		var live bool
		err := f.db.QueryRowContext(f.ctx, `SELECT expires_at > clock_timestamp() FROM sqldlm_leases WHERE id = $1`, lease).Scan(&live)
		return err == nil && !live
	}, 10*time.Second, 5*time.Millisecond)
}

// AcquireTx refuses, before changing anything, a transaction at any level
// but READ COMMITTED, with SQLSTATE SQD01 mapped to ErrIsolation; the
// server's default level (READ COMMITTED) is accepted.
func TestAcquireTxRefusesOtherIsolationLevels(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := f.lease("a", time.Minute)
	for _, level := range []sql.IsolationLevel{sql.LevelRepeatableRead, sql.LevelSerializable} {
		tx := f.begin(f.db.DB, level)
		req := rand.Int64()
		require.NoError(t, f.d.CreatePending(f.ctx, f.db.DB, a, req))
		res, err := f.d.AcquireTx(f.ctx, tx, &dialect.AcquireParams{Name: "n", LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
		require.Nil(t, res)
		require.ErrorIs(t, err, dialect.ErrIsolation, "%v", level)
		var de *dialect.Error
		require.ErrorAs(t, err, &de)
		require.Equal(t, "SQD01", de.Code)
		require.Contains(t, de.Message, "READ COMMITTED")
		require.Contains(t, de.Message, "sql.LevelReadCommitted")
		_, err = tx.ExecContext(f.ctx, `SELECT 1`)
		require.Error(t, err, "PostgreSQL aborts the transaction")
		require.NoError(t, tx.Rollback())

		require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds`), "nothing granted")
		require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_locks`), "nothing written")
		require.Equal(t, 1, f.pending(a, req), "the record is left alone")
		require.Equal(t, dialect.TxNotCommitted, f.outcome(a, req))
	}

	tx, err := f.db.BeginTx(f.ctx, nil) // the server's default: READ COMMITTED
	require.NoError(t, err)
	defer tx.Rollback()
	res := f.acquireTx(tx, dialect.AcquireParams{Name: "n", LeaseID: a, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, res.Status)
	require.NoError(t, tx.Commit())

	// Neither queueing nor upgrades: refused before any statement.
	tx = f.begin(f.db.DB, sql.LevelReadCommitted)
	for _, p := range []dialect.AcquireParams{
		{Name: "m", LeaseID: a, RequestID: 1, Mode: dialect.Exclusive, Enqueue: true},
		{Name: "n", LeaseID: a, RequestID: 2, Mode: dialect.Exclusive, UpgradeToken: res.Token},
	} {
		_, err := f.d.AcquireTx(f.ctx, tx, &p)
		require.Error(t, err)
	}
	_, err = tx.ExecContext(f.ctx, `SELECT 1`)
	require.NoError(t, err, "the transaction is still usable")
}

func TestClassifyErrorIsolation(t *testing.T) {
	t.Parallel()
	err := postgres.Dialect().ClassifyError(&pgconn.PgError{Code: "SQD01", Message: "must run at READ COMMITTED"})
	require.ErrorIs(t, err, dialect.ErrIsolation)
	require.False(t, dialect.IsRetryable(err))
}

// A grant made in a transaction is invisible to other connections until
// the commit, and a grant of the same name from elsewhere waits for the
// transaction to end: it is then refused after a commit, and granted after
// a rollback, which leaves no trace of the first grant.
func TestAcquireTxGrantIsVisibleOnlyAfterCommit(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, c := f.lease("a", time.Minute), f.lease("c", time.Minute)
	other := f.reopen()
	other.SetMaxOpenConns(1) // one backend, whose waits we can watch
	var pid int
	require.NoError(t, other.QueryRowContext(f.ctx, `SELECT pg_backend_pid()`).Scan(&pid))

	for _, commit := range []bool{true, false} {
		name := map[bool]string{true: "committed", false: "rolled-back"}[commit]
		tx := f.begin(f.db.DB, sql.LevelReadCommitted)
		req := rand.Int64()
		res := f.acquireTx(tx, dialect.AcquireParams{Name: name, LeaseID: a, RequestID: req, Mode: dialect.Exclusive, Payload: "in tx"})
		require.Equal(t, dialect.Granted, res.Status)
		require.Equal(t, 1, f.count(tx, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, name), "visible in tx")
		require.Zero(t, f.count(other, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, name), "invisible elsewhere")
		locks, err := f.d.Locks(f.ctx, other, &dialect.LocksFilter{Prefix: name})
		require.NoError(t, err)
		require.Empty(t, locks)

		var wg sync.WaitGroup
		var got *dialect.AcquireResult
		wg.Go(func() {
			res, err := f.d.Acquire(f.ctx, other, &dialect.AcquireParams{Name: name, LeaseID: c, RequestID: rand.Int64(), Mode: dialect.Exclusive})
			if err != nil {
				t.Errorf("acquire from elsewhere: %v", err)
				return
			}
			got = res
		})
		require.Eventually(t, func() bool {
			var waiting bool
			err := f.db.QueryRowContext(f.ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&waiting)
			return err == nil && waiting
		}, 10*time.Second, 5*time.Millisecond, "the other grant waits for the transaction")

		if commit {
			require.NoError(t, tx.Commit())
			wg.Wait()
			require.Equal(t, dialect.Blocked, got.Status)
			require.Equal(t, "a", got.Blocker.Owner)
			locks, err := f.d.Locks(f.ctx, other, &dialect.LocksFilter{Prefix: name})
			require.NoError(t, err)
			require.Len(t, locks, 1)
			require.Len(t, locks[0].Holders, 1)
			require.Equal(t, res.Token, locks[0].Holders[0].Token)
			require.Equal(t, "in tx", locks[0].Holders[0].Payload)
			require.Zero(t, f.pending(a, req), "the commit deleted the record")
		} else {
			require.NoError(t, tx.Rollback())
			wg.Wait()
			require.Equal(t, dialect.Granted, got.Status)
			require.Greater(t, got.Token, res.Token)
			require.Zero(t, f.count(other, `SELECT count(*) FROM sqldlm_holds WHERE name = $1 AND lease_id = $2`, name, a),
				"the rolled-back grant is gone")
			require.Equal(t, 1, f.pending(a, req), "the record is back, unlocked")
		}
	}
}

// PendingOutcome in its three situations, never waiting.
func TestPendingOutcome(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, c := f.lease("a", time.Minute), f.lease("c", time.Minute)

	{ // OpenThenCommitted
		tx := f.begin(f.db.DB, sql.LevelReadCommitted)
		req := rand.Int64()
		res := f.acquireTx(tx, dialect.AcquireParams{Name: "open", LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
		require.Equal(t, dialect.Granted, res.Status)
		// A repeat in the same transaction returns the same hold.
		again, err := f.d.AcquireTx(f.ctx, tx, &dialect.AcquireParams{Name: "open", LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
		require.NoError(t, err)
		require.Equal(t, dialect.Granted, again.Status)
		require.Equal(t, res.Token, again.Token)

		require.Equal(t, dialect.TxOpen, f.outcome(a, req))
		require.Equal(t, dialect.TxOpen, f.outcome(a, req), "asking again changes nothing")
		require.Equal(t, 1, f.pending(a, req), "others still see the record")
		require.NoError(t, tx.Commit())
		require.Equal(t, dialect.TxCommitted, f.outcome(a, req))
		require.Equal(t, dialect.TxCommitted, f.outcome(a, req))
	}

	{ // RolledBack
		tx := f.begin(f.db.DB, sql.LevelReadCommitted)
		req := rand.Int64()
		res := f.acquireTx(tx, dialect.AcquireParams{Name: "rolled", LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
		require.Equal(t, dialect.Granted, res.Status)
		require.NoError(t, tx.Rollback())
		require.Equal(t, 1, f.pending(a, req))
		require.Equal(t, dialect.TxNotCommitted, f.outcome(a, req))
		require.Zero(t, f.pending(a, req), "TxNotCommitted deletes the record")
	}

	{ // NeverGranted
		f.grant("taken", c, dialect.Exclusive)
		tx := f.begin(f.db.DB, sql.LevelReadCommitted)
		req := rand.Int64()
		res := f.acquireTx(tx, dialect.AcquireParams{Name: "taken", LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
		require.Equal(t, dialect.Blocked, res.Status)
		require.Equal(t, 1, f.pending(a, req), "a refusal leaves the record alone")
		// Nothing was granted, so nothing can commit: the record is unlocked
		// even while the transaction is open.
		require.Equal(t, dialect.TxNotCommitted, f.outcome(a, req))
		require.Zero(t, f.pending(a, req))
		require.NoError(t, tx.Commit())
	}

	{ // LeaseDeleted
		gone := f.lease("gone", time.Minute)
		req := rand.Int64()
		require.NoError(t, f.d.CreatePending(f.ctx, f.db.DB, gone, req))
		_, err := f.d.DeleteLease(f.ctx, f.db.DB, gone)
		require.NoError(t, err)
		require.Zero(t, f.pending(gone, req), "DeleteLease deletes the lease's records")
		require.Equal(t, dialect.TxCommitted, f.outcome(gone, req))
	}

	{ // DuplicateRecord
		req := rand.Int64()
		require.NoError(t, f.d.CreatePending(f.ctx, f.db.DB, a, req))
		require.ErrorIs(t, f.d.CreatePending(f.ctx, f.db.DB, a, req), dialect.ErrUniqueViolation)
		require.Equal(t, dialect.TxNotCommitted, f.outcome(a, req))
	}
}

// The own lease renews at once while a transaction that acquired with it
// (and took a dead holder over) is open: it is locked FOR KEY SHARE only.
func TestAcquireTxKeepsOwnLeaseRenewable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := f.lease("a", time.Minute)
	dead := f.lease("dead", 300*time.Millisecond)
	f.grant("taken", dead, dialect.Exclusive)
	f.expire(dead)

	tx := f.begin(f.db.DB, sql.LevelReadCommitted)
	res := f.acquireTx(tx, dialect.AcquireParams{Name: "fresh", LeaseID: a, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, res.Status)
	res = f.acquireTx(tx, dialect.AcquireParams{Name: "taken", LeaseID: a, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, res.Status)
	require.Len(t, res.TookOver, 1)

	other := f.reopen()
	for range 3 {
		ctx, cancel := context.WithTimeout(f.ctx, 2*time.Second)
		start := time.Now()
		ok, err := f.d.RenewLease(ctx, other, a)
		cancel()
		require.NoError(t, err, "the renewal must not wait for the transaction")
		require.True(t, ok)
		require.Less(t, time.Since(start), time.Second)
	}
	require.NoError(t, tx.Commit())
}

// Reap deletes the pending records of the dead leases it deletes and of
// leases already gone, skips (without waiting) a record that an open
// transaction has locked, and leaves live leases' records alone.
func TestReapDeletesPendingRecords(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	live := f.lease("live", time.Minute)
	dying := f.lease("dying", 100*time.Millisecond)
	ghost, locked := rand.Int64(), rand.Int64() // leases that do not exist
	for _, lease := range []int64{live, dying, ghost, locked} {
		require.NoError(t, f.d.CreatePending(f.ctx, f.db.DB, lease, 1))
	}
	f.expire(dying)
	tx := f.begin(f.db.DB, sql.LevelReadCommitted)
	_, err := tx.ExecContext(f.ctx, `DELETE FROM sqldlm_pending WHERE lease_id = $1`, locked)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
	defer cancel()
	res, err := f.d.Reap(ctx, f.reopen(), 100, time.Hour)
	require.NoError(t, err, "Reap does not wait for a locked record")
	require.Equal(t, 1, res.Leases)
	for lease, want := range map[int64]int{live: 1, dying: 0, ghost: 0, locked: 1} {
		require.Equal(t, want, f.pending(lease, 1), "lease %d", lease)
	}
	require.NoError(t, tx.Rollback())
	_, err = f.d.Reap(f.ctx, f.db.DB, 100, time.Hour)
	require.NoError(t, err)
	require.Zero(t, f.pending(locked, 1), "a later pass gets it")
	require.Equal(t, 1, f.pending(live, 1))
}

// Other errors of AcquireTx reach the caller classified too: here a lock
// timeout while another transaction holds the name's row.
func TestAcquireTxErrorsAreClassified(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := f.lease("a", time.Minute)
	tx := f.begin(f.db.DB, sql.LevelReadCommitted)
	_, err := tx.ExecContext(f.ctx, `SET LOCAL lock_timeout = '50ms'`)
	require.NoError(t, err)
	// Another transaction holds the name's row.
	holder := f.begin(f.reopen(), sql.LevelReadCommitted)
	f.grant("busy", a, dialect.Shared)
	_, err = holder.ExecContext(f.ctx, `SELECT 1 FROM sqldlm_locks WHERE name = 'busy' FOR UPDATE`)
	require.NoError(t, err)
	_, err = f.d.AcquireTx(f.ctx, tx, &dialect.AcquireParams{Name: "busy", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Shared})
	require.ErrorIs(t, err, dialect.ErrLockTimeout)
	require.False(t, errors.Is(err, dialect.ErrIsolation))
}

// Workers grant names in transactions they commit or roll back at random,
// alongside plain grants, releases and a reaper, with audit on. Every
// PendingOutcome answer matches what the worker did, no two live holds
// conflict, and the audit log has exactly one grant row per committed grant.
func TestAcquireTxUnderLoad(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.setAudit(true, time.Hour)
	ctx, cancel := context.WithTimeout(f.ctx, 3*time.Second)
	defer cancel()
	const workers = 6
	names := []string{"a", "b", "c"}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		grants  int // committed grants, in and out of transactions
		inTx    int
		errs    = make(chan error, workers+2)
		checker = f.reopen()
	)
	wg.Go(func() {
		for ctx.Err() == nil {
			var bad sql.NullString
			err := checker.QueryRowContext(f.ctx, `SELECT string_agg(name, ',') FROM (
				SELECT h.name FROM sqldlm_holds h JOIN sqldlm_leases l ON l.id = h.lease_id
				WHERE l.broken_at IS NULL AND l.expires_at > clock_timestamp()
				GROUP BY h.name
				HAVING count(*) FILTER (WHERE h.mode = 'X') > 0 AND count(*) > 1) s`).Scan(&bad)
			if err != nil {
				errs <- err
				return
			}
			if bad.Valid {
				errs <- fmt.Errorf("conflicting live holds of %s", bad.String)
				return
			}
		}
	})
	reaper := f.reopen()
	wg.Go(func() {
		for ctx.Err() == nil {
			if _, err := f.d.Reap(f.ctx, reaper, 10, time.Hour); err != nil && !dialect.IsRetryable(err) {
				errs <- fmt.Errorf("reap: %w", err)
				return
			}
		}
	})
	for w := range workers {
		pool := f.reopen()
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			lease := rand.Int64()
			if err := f.d.CreateLease(f.ctx, pool, &dialect.CreateLeaseParams{ID: lease, Owner: fmt.Sprint("w", w), TTL: time.Minute}); err != nil {
				errs <- err
				return
			}
			type held struct {
				name  string
				token int64
			}
			var holds []held
			fail := func(op string, err error) bool {
				if err != nil {
					errs <- fmt.Errorf("worker %d: %s: %w", w, op, err)
				}
				return err != nil
			}
			for ctx.Err() == nil {
				if len(holds) > 0 && r.IntN(2) == 0 {
					h := holds[0]
					holds = holds[1:]
					if _, err := f.d.Release(f.ctx, pool, &dialect.HoldRef{Name: h.name, LeaseID: lease, Token: h.token}); fail("release", err) {
						return
					}
					continue
				}
				name := names[r.IntN(len(names))]
				mode := []dialect.Mode{dialect.Shared, dialect.Exclusive}[r.IntN(2)]
				req := r.Int64()
				if r.IntN(3) == 0 {
					res, err := f.d.Acquire(f.ctx, pool, &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: req, Mode: mode})
					if fail("acquire", err) {
						return
					}
					if res.Status == dialect.Granted {
						holds = append(holds, held{name, res.Token})
						mu.Lock()
						grants++
						mu.Unlock()
					}
					continue
				}
				if fail("create pending", f.d.CreatePending(f.ctx, pool, lease, req)) {
					return
				}
				tx, err := pool.BeginTx(f.ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
				if fail("begin", err) {
					return
				}
				res, err := f.d.AcquireTx(f.ctx, tx, &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: req, Mode: mode})
				if err != nil {
					_ = tx.Rollback()
					// A deadlock, or the routine's 1s lock_timeout behind another
					// worker's open transaction (under load): the caller rolls
					// back, and nothing may have been granted.
					if !errors.Is(err, dialect.ErrDeadlock) && !errors.Is(err, dialect.ErrLockTimeout) {
						fail("acquire tx", err)
						return
					}
					acqErr := err
					out, err := f.d.PendingOutcome(f.ctx, pool, lease, req)
					if fail("outcome", err) {
						return
					}
					if out != dialect.TxNotCommitted {
						errs <- fmt.Errorf("worker %d: outcome %v after %v", w, out, acqErr)
						return
					}
					continue
				}
				granted := res.Status == dialect.Granted
				if granted {
					out, err := f.d.PendingOutcome(f.ctx, pool, lease, req)
					if fail("outcome", err) {
						return
					}
					if out != dialect.TxOpen {
						errs <- fmt.Errorf("worker %d: outcome of an open grant: %v", w, out)
						return
					}
				}
				commit := r.IntN(2) == 0
				if commit {
					err = tx.Commit()
				} else {
					err = tx.Rollback()
				}
				if fail("end tx", err) {
					return
				}
				want := dialect.TxNotCommitted
				if granted && commit {
					want = dialect.TxCommitted
					holds = append(holds, held{name, res.Token})
					mu.Lock()
					grants++
					inTx++
					mu.Unlock()
				}
				out, err := f.d.PendingOutcome(f.ctx, pool, lease, req)
				if fail("outcome", err) {
					return
				}
				if out != want {
					errs <- fmt.Errorf("worker %d: outcome %v, want %v (granted %v, commit %v)", w, out, want, granted, commit)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Positive(t, inTx)
	require.Equal(t, grants, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_audit WHERE event = 'grant'`))
	require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_pending`), "every record was resolved")
	t.Logf("%d grants, %d of them in transactions", grants, inTx)
}
