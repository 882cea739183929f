package mysql_test

// MySQL/MariaDB hazards that the cross-dialect conformance suite does not
// reach: poisoned session settings, lock wait timeouts in the middle of a
// procedure, fenced transactions (idle bound, old snapshots, pinned holds),
// and concurrent retries of one request.

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

var d = mysql.Dialect().(dialect.Testable)

type env struct {
	t   *testing.T
	ctx context.Context
	db  *testdb.DB
}

func newEnv(t *testing.T) *env {
	t.Helper()
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return &env{t: t, ctx: ctx, db: testdb.OpenMigrated(t, testdb.MySQL)}
}

// pool opens another pool on the test's database with extra DSN parameters
// (go-sql-driver sends unknown ones as SET name = value on every connection).
func (e *env) pool(params url.Values) *sql.DB {
	e.t.Helper()
	return reopen(e.t, e.db, params)
}

func reopen(t *testing.T, db *testdb.DB, params url.Values) *sql.DB {
	t.Helper()
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	q := u.Query()
	for k, vs := range params {
		q[k] = vs
	}
	u.RawQuery = q.Encode()
	return testdb.Reopen(t, db.Kind, u.String()).DB
}

func (e *env) lease(db *sql.DB, owner string, ttl time.Duration) int64 {
	e.t.Helper()
	id := rand.Int64()
	require.NoError(e.t, d.CreateLease(e.ctx, db, &dialect.CreateLeaseParams{ID: id, Owner: owner, TTL: ttl}))
	return id
}

func (e *env) acquire(db *sql.DB, p dialect.AcquireParams) *dialect.AcquireResult {
	e.t.Helper()
	if p.RequestID == 0 {
		p.RequestID = rand.Int64()
	}
	res, err := d.Acquire(e.ctx, db, &p)
	require.NoError(e.t, err)
	return res
}

func (e *env) grant(db *sql.DB, name string, leaseID int64, mode dialect.Mode) int64 {
	e.t.Helper()
	res := e.acquire(db, dialect.AcquireParams{Name: name, LeaseID: leaseID, Mode: mode})
	require.Equal(e.t, dialect.Granted, res.Status, "grant %s to %d: %+v", name, leaseID, res.Blocker)
	return res.Token
}

// expire waits, by the server's clock, until ttl has passed.
func (e *env) expire(ttl time.Duration) {
	e.t.Helper()
	start, err := d.Now(e.ctx, e.db.DB)
	require.NoError(e.t, err)
	require.Eventually(e.t, func() bool {
		now, err := d.Now(e.ctx, e.db.DB)
		return err == nil && now.Sub(start) > ttl
	}, 10*time.Second, 5*time.Millisecond)
}

func (e *env) count(db *sql.DB, query string, args ...any) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, db.QueryRowContext(e.ctx, query, args...).Scan(&n))
	return n
}

// session reports the connection's time zone and whether a transaction is
// in progress on it. It asks the server to change the next transaction's
// characteristics (to the default access mode), which it refuses (1568)
// while one is in progress: information_schema.innodb_trx would tell too,
// but it is a cache that is not refreshed within 0.1 s of its last read by
// any session, so concurrent tests reading it see stale rows. db must have
// one connection.
func (e *env) session(db *sql.DB) (tz string, inTx bool) {
	e.t.Helper()
	conn, err := db.Conn(e.ctx)
	require.NoError(e.t, err)
	defer conn.Close()
	require.NoError(e.t, conn.QueryRowContext(e.ctx, `SELECT @@session.time_zone`).Scan(&tz))
	_, err = conn.ExecContext(e.ctx, `SET TRANSACTION READ WRITE`)
	var myErr *gomysql.MySQLError
	if errors.As(err, &myErr) && myErr.Number == 1568 { // ER_CANT_CHANGE_TX_CHARACTERISTICS
		return tz, true
	}
	require.NoError(e.t, err)
	return tz, false
}

// poisoned opens a pool of one connection with a frozen SET timestamp
// (NOW() in 2001), autocommit off, an odd time zone and an odd sql_mode,
// and a check that a procedure left that connection's time zone as it was
// and no transaction open.
func (e *env) poisoned() (*sql.DB, func(step string)) {
	e.t.Helper()
	db := e.pool(url.Values{
		"timestamp":  {"1000000000"},
		"autocommit": {"0"},
		"time_zone":  {"'-07:00'"},
		"sql_mode":   {"'ANSI_QUOTES,PIPES_AS_CONCAT,NO_BACKSLASH_ESCAPES'"},
	})
	db.SetMaxOpenConns(1)
	return db, func(step string) {
		e.t.Helper()
		tz, inTx := e.session(db)
		require.Equal(e.t, "-07:00", tz, "%s: time zone restored", step)
		require.False(e.t, inTx, "%s: no transaction left open", step)
	}
}

// TestSessionSettingsDoNotMatter: a pooled connection poisoned with a frozen
// SET timestamp (NOW() in 2001), autocommit off and an odd time zone still
// gets expiry by the real clock; every procedure puts the time zone back and
// leaves no transaction open.
func TestSessionSettingsDoNotMatter(t *testing.T) {
	e := newEnv(t)
	poisoned, check := e.poisoned()

	a := e.lease(poisoned, "a", time.Minute) // by NOW() it would have expired in 2001
	check("create lease")
	c := e.lease(e.db.DB, "c", time.Minute)
	tok := e.grant(poisoned, "n", a, dialect.Exclusive)
	check("grant")
	bl := e.acquire(poisoned, dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Shared, Enqueue: true})
	require.Equal(t, dialect.Blocked, bl.Status)
	require.Greater(t, bl.Blocker.ExpiresIn, 50*time.Second)
	check("blocked")
	ok, err := d.RenewLease(e.ctx, poisoned, a)
	require.NoError(t, err)
	require.True(t, ok)
	check("renew")
	ok, err = d.Downgrade(e.ctx, poisoned, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok})
	require.NoError(t, err)
	require.True(t, ok)
	check("downgrade")
	// Fence reads the lease through a second connection (db); poisoned has
	// one, so it serves once as tx's connection and once as db.
	tx, err := poisoned.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	ok, err = d.Fence(e.ctx, e.db.DB, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, tx.Commit())
	check("fence in tx")
	tx, err = e.db.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	ok, err = d.Fence(e.ctx, poisoned, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, tx.Commit())
	check("fence's lease read")
	ok, err = d.Release(e.ctx, poisoned, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok})
	require.NoError(t, err)
	require.True(t, ok)
	check("release")
	res, err := d.Abandon(e.ctx, poisoned, &dialect.AbandonParams{Name: "n", LeaseID: c, RequestID: rand.Int64()})
	require.NoError(t, err)
	require.Empty(t, res.Freed)
	check("abandon")
	_, err = d.Reap(e.ctx, poisoned, 10, time.Hour)
	require.NoError(t, err)
	check("reap")
	_, err = d.DeleteLease(e.ctx, poisoned, a)
	require.NoError(t, err)
	check("delete lease")

	// The error path restores the time zone too: a duplicate lease id.
	err = d.CreateLease(e.ctx, poisoned, &dialect.CreateLeaseParams{ID: c, Owner: "dup", TTL: time.Minute})
	require.ErrorIs(t, err, dialect.ErrUniqueViolation)
	check("failed create lease")

	// A session whose NOW() is in the future does not make leases live.
	future := e.pool(url.Values{"timestamp": {"2000000000"}})
	dead := e.lease(future, "dead", 500*time.Millisecond)
	held := e.grant(future, "m", dead, dialect.Exclusive)
	e.expire(500 * time.Millisecond)
	ok, err = d.RenewLease(e.ctx, future, dead)
	require.NoError(t, err)
	require.False(t, ok, "expired by the real clock")
	require.Greater(t, e.grant(future, "m", c, dialect.Exclusive), held, "taken over")
}

// TestMigrateUnderOddSQLMode: the migration fixes sql_mode for the routines
// it creates, so a migrator session with ANSI_QUOTES and friends works and
// the routines behave the same.
func TestMigrateUnderOddSQLMode(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	raw := testdb.Open(t, testdb.MySQL)
	odd := reopen(t, raw, url.Values{"sql_mode": {"'ANSI,NO_BACKSLASH_ESCAPES'"}})
	odd.SetMaxOpenConns(1)
	_, err := migrations.Up(ctx, odd, d)
	require.NoError(t, err)
	var mode string
	require.NoError(t, odd.QueryRowContext(ctx, `SELECT @@session.sql_mode`).Scan(&mode))
	require.Contains(t, mode, "ANSI_QUOTES", "the migrator's session gets its sql_mode back")
	id := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, odd, &dialect.CreateLeaseParams{ID: id, Owner: "o", TTL: time.Minute}))
	res, err := d.Acquire(ctx, odd, &dialect.AcquireParams{Name: "n", LeaseID: id, RequestID: 1, Mode: dialect.Exclusive})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	// The session is not strict, so arguments are truncated to the
	// parameters' 1024 bytes; the routines' statements run in strict mode, so
	// an overlong owner or name is an error, never truncated into another.
	err = d.CreateLease(ctx, odd, &dialect.CreateLeaseParams{ID: rand.Int64(), Owner: string(make([]byte, 300)), TTL: time.Minute})
	require.Error(t, err)
	long := string(make([]byte, 255))
	res, err = d.Acquire(ctx, odd, &dialect.AcquireParams{Name: long, LeaseID: id, RequestID: 2, Mode: dialect.Exclusive})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	_, err = d.Acquire(ctx, odd, &dialect.AcquireParams{Name: long + "x", LeaseID: id, RequestID: 3, Mode: dialect.Shared, Enqueue: true})
	require.Error(t, err, "blocked by the 255-byte name's hold if it were truncated")
	ok, err := d.Release(ctx, odd, &dialect.HoldRef{Name: long + string(make([]byte, 2000)), LeaseID: id, Token: res.Token})
	require.NoError(t, err)
	require.False(t, ok, "an overlong name matches no hold")
}

// TestLockWaitTimeoutRollsBack: a 1205 in the middle of a grant (after the
// name's row was inserted) rolls back the whole transaction, not only the
// statement, and the error is retryable.
func TestLockWaitTimeoutRollsBack(t *testing.T) {
	e := newEnv(t)
	impatient := e.pool(url.Values{"innodb_lock_wait_timeout": {"1"}, "time_zone": {"'+03:00'"}})
	impatient.SetMaxOpenConns(1)
	a := e.lease(e.db.DB, "a", time.Minute)

	// Another transaction holds the lease row exclusively: the grant's
	// shared lock on it (phase 2, after the name's row was created) times out.
	blocker, err := e.db.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer blocker.Rollback()
	var n int
	require.NoError(t, blocker.QueryRowContext(e.ctx, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? FOR UPDATE`, a).Scan(&n))

	_, err = d.Acquire(e.ctx, impatient, &dialect.AcquireParams{Name: "fresh", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive})
	require.ErrorIs(t, err, dialect.ErrLockTimeout)
	require.True(t, dialect.IsRetryable(err))
	tz, inTx := e.session(impatient)
	require.Equal(t, "+03:00", tz)
	require.False(t, inTx, "the procedure rolled its transaction back")
	require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_locks`), "the name's row was rolled back with the rest")
	require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders`))

	require.NoError(t, blocker.Rollback())
	e.grant(impatient, "fresh", a, dialect.Exclusive)
}

// TestBlockedAttemptTakesNoLocks: while a live hold conflicts, an attempt
// answers Blocked from consistent reads, without waiting for rows that other
// transactions have locked (except, when it first enqueues, its own lease).
func TestBlockedAttemptTakesNoLocks(t *testing.T) {
	e := newEnv(t)
	a, c := e.lease(e.db.DB, "a", time.Minute), e.lease(e.db.DB, "c", time.Minute)
	e.grant(e.db.DB, "n", a, dialect.Exclusive)
	other, err := e.db.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer other.Rollback()
	var n int
	require.NoError(t, other.QueryRowContext(e.ctx, `SELECT COUNT(*) FROM sqldlm_locks WHERE name = 'n' FOR UPDATE`).Scan(&n))
	// The holder's lease only: the first enqueue of a request share-locks its
	// own lease, so that no waiter row can outlive it
	// (TestMySQLWaiterOfDeletedLease in integration_test).
	require.NoError(t, other.QueryRowContext(e.ctx, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? FOR UPDATE`, a).Scan(&n))

	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	for _, enqueue := range []bool{false, true} {
		res, err := d.Acquire(ctx, e.db.DB, &dialect.AcquireParams{Name: "n", LeaseID: c, RequestID: 7, Mode: dialect.Exclusive, Enqueue: enqueue})
		require.NoError(t, err)
		require.Equal(t, dialect.Blocked, res.Status)
		require.Equal(t, "a", res.Blocker.Owner)
	}
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_waiters`))
}

// TestFenceBoundsIdleTransaction: a fenced transaction that then sits idle is
// ended by the server after the idle timeout (MariaDB idle_transaction_timeout,
// MySQL wait_timeout), which lets a takeover through.
func TestFenceBoundsIdleTransaction(t *testing.T) {
	e := newEnv(t)
	a, c := e.lease(e.db.DB, "a", 200*time.Millisecond), e.lease(e.db.DB, "c", time.Minute)
	tok := e.grant(e.db.DB, "n", a, dialect.Exclusive)
	fenced := e.pool(nil)
	tx, err := fenced.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	ok, err := d.Fence(e.ctx, fenced, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}, 1500*time.Millisecond) // rounded up to 2s
	require.NoError(t, err)
	require.True(t, ok)
	e.expire(200 * time.Millisecond)

	res := e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Blocked, res.Status, "pinned while the fenced transaction is open")
	require.Eventually(t, func() bool {
		res, err := d.Acquire(e.ctx, e.db.DB, &dialect.AcquireParams{Name: "n", LeaseID: c, RequestID: rand.Int64(), Mode: dialect.Exclusive})
		return err == nil && res.Status == dialect.Granted
	}, 15*time.Second, 50*time.Millisecond, "the server ended the idle fenced transaction")
	require.Error(t, tx.Commit(), "the fenced transaction was ended by the server")
}

// TestFenceOldSnapshot: at REPEATABLE READ, a snapshot taken before the
// grant (the hold is not in it) and before the lease's last renewal (the
// lease looks expired in it) does not matter: Fence pins the hold with a
// locking read and reads the lease outside the transaction, so it reports
// the lock held (schema version 4 answered a serialization error). A lease
// that has expired is reported not held, without an error.
func TestFenceOldSnapshot(t *testing.T) {
	e := newEnv(t)
	const ttl = time.Second
	a := e.lease(e.db.DB, "a", ttl)

	tx, err := e.db.BeginTx(e.ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
	require.NoError(t, err)
	defer tx.Rollback()
	var snapshotExpiry int64
	require.NoError(t, tx.QueryRowContext(e.ctx, `SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', expires_at)
		FROM sqldlm_leases WHERE id = ?`, a).Scan(&snapshotExpiry))
	tok := e.grant(e.db.DB, "n", a, dialect.Exclusive)
	ref := &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}
	require.Zero(t, e.qcount(tx, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, tok), "the snapshot predates the grant")
	for { // keep the lease alive past the expiry the snapshot shows
		ok, err := d.RenewLease(e.ctx, e.db.DB, a)
		require.NoError(t, err)
		require.True(t, ok)
		now, err := d.Now(e.ctx, e.db.DB)
		require.NoError(t, err)
		if now.UnixMicro() > snapshotExpiry+20_000 {
			break
		}
	}
	require.Zero(t, e.qcount(tx, `SELECT COUNT(*) FROM sqldlm_leases
		WHERE id = ? AND TIMESTAMPDIFF(MICROSECOND, '1970-01-01', expires_at) > ?`, a, snapshotExpiry),
		"the snapshot predates the renewals")
	ok, err := d.Fence(e.ctx, e.db.DB, tx, ref, time.Minute)
	require.NoError(t, err)
	require.True(t, ok, "held by the latest state")
	require.NoError(t, tx.Rollback())

	// Not renewed any more: expired, whatever the snapshot says.
	tx, err = e.db.BeginTx(e.ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
	require.NoError(t, err)
	defer tx.Rollback()
	require.Equal(t, 1, e.qcount(tx, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, tok))
	e.expire(ttl)
	ok, err = d.Fence(e.ctx, e.db.DB, tx, ref, time.Minute)
	require.NoError(t, err)
	require.False(t, ok, "the lease expired")
}

// TestPinnedHoldsAreNotWaitedFor: a fenced hold is not deleted by the reaper
// (which leaves the lease for a later pass instead of waiting), and the
// holder's own upgrade answers Blocked until the fenced transaction ends.
func TestPinnedHoldsAreNotWaitedFor(t *testing.T) {
	e := newEnv(t)
	dead, a := e.lease(e.db.DB, "dead", time.Second), e.lease(e.db.DB, "a", time.Minute)
	td := e.grant(e.db.DB, "d", dead, dialect.Exclusive)
	ta := e.grant(e.db.DB, "s", a, dialect.Shared)
	tx, err := e.db.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	for _, ref := range []*dialect.HoldRef{{Name: "d", LeaseID: dead, Token: td}, {Name: "s", LeaseID: a, Token: ta}} {
		ok, err := d.Fence(e.ctx, e.db.DB, tx, ref, time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
	}
	e.expire(time.Second)

	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	res, err := d.Reap(ctx, e.db.DB, 100, time.Hour)
	require.NoError(t, err)
	require.Zero(t, res.Leases, "the pinned dead lease waits")
	require.Empty(t, res.Freed)
	up := dialect.AcquireParams{Name: "s", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive, UpgradeToken: ta}
	got, err := d.Acquire(ctx, e.db.DB, &up)
	require.NoError(t, err)
	require.Equal(t, dialect.Blocked, got.Status)

	require.NoError(t, tx.Commit())
	res, err = d.Reap(ctx, e.db.DB, 100, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, res.Leases)
	require.Equal(t, []string{"d"}, res.Freed)
	require.Equal(t, dialect.Granted, e.acquire(e.db.DB, up).Status)
}

// TestConcurrentRetriesOfOneRequest: attempts of one request racing on
// several connections (a retry while the first attempt still runs) end with
// one hold, and every attempt that is granted reports its token.
func TestConcurrentRetriesOfOneRequest(t *testing.T) {
	e := newEnv(t)
	a := e.lease(e.db.DB, "a", time.Minute)
	for round := range 5 {
		p := dialect.AcquireParams{Name: "n" + string(rune('0'+round)), LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive}
		var wg sync.WaitGroup
		tokens := make([]int64, 4)
		for i := range tokens {
			db := e.pool(nil)
			wg.Go(func() {
				for {
					res, err := d.Acquire(e.ctx, db, &p)
					if err != nil && dialect.IsRetryable(err) {
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					if res.Status == dialect.Granted {
						tokens[i] = res.Token
					}
					return
				}
			})
		}
		wg.Wait()
		for _, tok := range tokens {
			require.Equal(t, tokens[0], tok, "round %d: %v", round, tokens)
		}
		require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE name = ?`, p.Name))
	}
}

// TestOverlongNameIsRejected: the routines run in strict mode, so a name over
// 255 bytes is an error rather than truncated into another name.
func TestOverlongNameIsRejected(t *testing.T) {
	e := newEnv(t)
	a := e.lease(e.db.DB, "a", time.Minute)
	long := string(make([]byte, 255)) + "x"
	e.grant(e.db.DB, long[:255], a, dialect.Exclusive)
	_, err := d.Acquire(e.ctx, e.db.DB, &dialect.AcquireParams{Name: long, LeaseID: a, RequestID: 1, Mode: dialect.Exclusive})
	require.Error(t, err)
	var de *dialect.Error
	require.False(t, errors.As(err, &de) && dialect.IsRetryable(err))
}

// TestTakeoverReportsOnlyCommittedGrants: sqldlm_acquire returns each dead
// lease's holds before it deletes them, and a later dead lease that is pinned
// rolls the whole takeover back: that answer is Blocked and reports nothing.
// The grant that follows reports every conflicting hold it took over (an
// expired lease's, a broken lease's, one whose lease row is gone), with the
// leases as they were before it; a repeat of that request reports none.
func TestTakeoverReportsOnlyCommittedGrants(t *testing.T) {
	e := newEnv(t)
	const ttl = time.Second
	ids := []int64{rand.Int64N(1 << 40), 1<<40 + rand.Int64N(1<<40), 2<<40 + rand.Int64N(1<<40)}
	orphan, low, high := ids[0], ids[1], ids[2]
	for _, id := range []int64{low, high} {
		owner := map[int64]string{low: "low", high: "high"}[id]
		require.NoError(t, d.CreateLease(e.ctx, e.db.DB, &dialect.CreateLeaseParams{ID: id, Owner: owner, TTL: ttl}))
	}
	c := e.lease(e.db.DB, "c", time.Minute)
	tl := e.grant(e.db.DB, "n", low, dialect.Shared)
	th := e.grant(e.db.DB, "n", high, dialect.Shared)
	_, err := e.db.ExecContext(e.ctx, `INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at)
		VALUES ('n', ?, 1, 'S', UTC_TIMESTAMP(6))`, orphan)
	require.NoError(t, err)
	to := int64(e.count(e.db.DB, `SELECT token FROM sqldlm_holders WHERE lease_id = ?`, orphan))
	tx, err := e.db.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	ok, err := d.Fence(e.ctx, e.db.DB, tx, &dialect.HoldRef{Name: "n", LeaseID: high, Token: th}, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	_, err = e.db.ExecContext(e.ctx, `UPDATE sqldlm_leases SET broken_at = UTC_TIMESTAMP(6) WHERE id = ?`, low)
	require.NoError(t, err)
	e.expire(ttl)

	p := dialect.AcquireParams{Name: "n", LeaseID: c, RequestID: rand.Int64(), Mode: dialect.Exclusive}
	res := e.acquire(e.db.DB, p)
	require.Equal(t, dialect.Blocked, res.Status, "the pinned hold of the last dead lease blocks")
	require.Empty(t, res.TookOver)
	require.Equal(t, 3, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE name = 'n'`), "the takeover was rolled back")
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? AND broken_at IS NULL`, high))

	require.NoError(t, tx.Commit())
	res = e.acquire(e.db.DB, p)
	require.Equal(t, dialect.Granted, res.Status)
	require.Len(t, res.TookOver, 3)
	now, err := d.Now(e.ctx, e.db.DB)
	require.NoError(t, err)
	want := map[int64]struct {
		owner  string
		token  int64
		broken bool
	}{orphan: {"", to, false}, low: {"low", tl, true}, high: {"high", th, false}}
	for i, h := range res.TookOver {
		w, ok := want[h.LeaseID]
		require.True(t, ok, "lease %d", h.LeaseID)
		require.Equal(t, ids[i], h.LeaseID, "in lease id order")
		require.Equal(t, w.owner, h.Owner)
		require.Equal(t, w.token, h.Token)
		require.Equal(t, dialect.Shared, h.Mode)
		require.Equal(t, w.broken, h.Broken, "lease %d", h.LeaseID)
		if h.LeaseID == orphan {
			require.Equal(t, time.UnixMicro(0).UTC(), h.ExpiredAt)
		} else {
			require.WithinDuration(t, now, h.ExpiredAt, time.Minute)
			require.False(t, h.ExpiredAt.After(now))
		}
	}
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? AND broken_at IS NOT NULL`, high))

	again := e.acquire(e.db.DB, p)
	require.Equal(t, dialect.Granted, again.Status)
	require.Equal(t, res.Token, again.Token)
	require.Empty(t, again.TookOver, "a repeated request took nothing over")
}

// TestOverlongPayloadIsRejected: under a caller's non-strict sql_mode, which
// truncates arguments to the parameters' width, a payload over 1024 bytes is
// still an error (the parameters are wider than the column, the routines run
// in strict mode), never stored cut short.
func TestOverlongPayloadIsRejected(t *testing.T) {
	e := newEnv(t)
	lax := e.pool(url.Values{"sql_mode": {"''"}})
	a := e.lease(lax, "a", time.Minute)
	full := strings.Repeat("p", dialect.PayloadMaxBytes)
	for _, p := range []string{full + "x", full + strings.Repeat("x", 8000)} {
		_, err := d.Acquire(e.ctx, lax, &dialect.AcquireParams{Name: "n", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive, Payload: p})
		require.Error(t, err, "%d bytes", len(p))
	}
	require.Equal(t, 0, e.count(lax, `SELECT COUNT(*) FROM sqldlm_holders WHERE name = 'n'`))
	res := e.acquire(lax, dialect.AcquireParams{Name: "n", LeaseID: a, Mode: dialect.Exclusive, Payload: full})
	require.Equal(t, dialect.Granted, res.Status)
	ref := &dialect.HoldRef{Name: "n", LeaseID: a, Token: res.Token}
	for _, p := range []string{"short" + full, full + strings.Repeat("x", 8000)} {
		_, err := d.SetPayload(e.ctx, lax, ref, p)
		require.Error(t, err, "%d bytes", len(p))
	}
	var stored string
	require.NoError(t, lax.QueryRowContext(e.ctx, `SELECT payload FROM sqldlm_holders WHERE token = ?`, res.Token).Scan(&stored))
	require.Equal(t, full, stored)
}

// TestLockDelayFromBreak: a lease is dead since the earlier of its
// expires_at and broken_at, and the blocker reported is the conflicting hold
// that blocks longest, live or within the delay.
func TestLockDelayFromBreak(t *testing.T) {
	e := newEnv(t)
	live, broken, c := e.lease(e.db.DB, "live", time.Minute), e.lease(e.db.DB, "broken", time.Hour), e.lease(e.db.DB, "c", time.Minute)
	tl := e.grant(e.db.DB, "n", live, dialect.Shared)
	tb := e.grant(e.db.DB, "n", broken, dialect.Shared)
	_, err := e.db.ExecContext(e.ctx, `UPDATE sqldlm_leases SET broken_at = UTC_TIMESTAMP(6) WHERE id = ?`, broken)
	require.NoError(t, err)

	res := e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive, LockDelay: 2 * time.Hour})
	require.Equal(t, dialect.Blocked, res.Status)
	require.Equal(t, "broken", res.Blocker.Owner, "the delayed dead hold blocks longer than the live one")
	require.Greater(t, res.Blocker.ExpiresIn, 119*time.Minute)
	require.LessOrEqual(t, res.Blocker.ExpiresIn, 2*time.Hour, "counted from broken_at, not from expires_at an hour later")

	res = e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive, LockDelay: time.Second})
	require.Equal(t, dialect.Blocked, res.Status)
	require.Equal(t, "live", res.Blocker.Owner, "the live hold blocks longer than the delay")
	require.Greater(t, res.Blocker.ExpiresIn, 30*time.Second)

	// Shared requests conflict with neither; the live hold is released.
	ok, err := d.Release(e.ctx, e.db.DB, &dialect.HoldRef{Name: "n", LeaseID: live, Token: tl})
	require.NoError(t, err)
	require.True(t, ok)
	res = e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive, LockDelay: 400 * time.Millisecond})
	require.Equal(t, dialect.Blocked, res.Status)
	require.Equal(t, "broken", res.Blocker.Owner)
	require.Equal(t, dialect.Shared, res.Blocker.Mode)
	require.Positive(t, res.Blocker.ExpiresIn)
	require.LessOrEqual(t, res.Blocker.ExpiresIn, 400*time.Millisecond)
	e.expire(res.Blocker.ExpiresIn)
	res = e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive, LockDelay: 400 * time.Millisecond})
	require.Equal(t, dialect.Granted, res.Status)
	require.Len(t, res.TookOver, 1)
	require.Equal(t, tb, res.TookOver[0].Token)
	require.True(t, res.TookOver[0].Broken)
}
