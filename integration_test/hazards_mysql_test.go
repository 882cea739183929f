package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Scenario S16 (RELIABILITY-PLAN §4.2, §7): InnoDB hazards on MariaDB.

// withParams returns rawDSN with query parameters added; go-sql-driver
// sends the ones it does not know as SET of session variables on every new
// connection.
func withParams(t *testing.T, rawDSN string, kv ...string) string {
	t.Helper()
	u, err := url.Parse(rawDSN)
	require.NoError(t, err)
	q := u.Query()
	for i := 0; i < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// retryCounter is a slog handler that counts the client's "acquire failed,
// retrying" records whose error matches a substring.
type retryCounter struct {
	match string
	n     atomic.Int64
}

func (h *retryCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *retryCounter) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" && strings.Contains(a.Value.String(), h.match) {
			h.n.Add(1)
		}
		return true
	})
	return nil
}
func (h *retryCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *retryCounter) WithGroup(string) slog.Handler      { return h }

// lockWaits counts the sessions of the test's database whose statement
// has been running for over 200ms: in these tests, those waiting for a row
// lock. (information_schema.innodb_trx does not list them reliably on
// MariaDB 10.11; and a MariaDB 10.11.19 server crashed, with signal 11 in
// free_tmp_table during a shutdown, while it ran a join of innodb_trx and
// processlist polled every 5ms, so poll gently.)
func lockWaits(ctx context.Context, db *sql.DB) int {
	var database string
	if err := db.QueryRowContext(ctx, `SELECT DATABASE()`).Scan(&database); err != nil {
		return -1
	}
	rows, err := db.QueryContext(ctx, `SELECT db, command, time_ms FROM information_schema.processlist WHERE id <> CONNECTION_ID()`)
	if err != nil {
		return -1
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var in, command sql.NullString
		var ms float64
		if err := rows.Scan(&in, &command, &ms); err == nil && in.String == database &&
			(command.String == "Execute" || command.String == "Query") && ms > 200 {
			n++
		}
	}
	return n
}

// (a) Three sessions race to create the same new name while a first
// inserter holds it, then rolls back: InnoDB makes one of them a deadlock
// victim (1213) in most trials. Lock and TryLock must retry it: each
// returns a grant or ErrLocked, never the deadlock.
func TestMySQLFirstInsertRace(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.MySQL)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	counter := &retryCounter{match: "1213"}
	var clients []*sqldlm.Client
	for i := range 3 {
		clients = append(clients, newClient(t, db, sqldlm.Config{Owner: fmt.Sprintf("racer-%d", i), TTL: 5 * time.Second,
			Logger: slog.New(counter)}))
	}
	const trials = 6
	for trial := range trials {
		name := fmt.Sprintf("race/%d", trial)
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		tx, err := conn.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.ExecContext(ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (?, 0, SYSDATE(6))`, name)
		require.NoError(t, err)

		type result struct {
			l   *sqldlm.Lock
			err error
		}
		results := make(chan result, len(clients))
		for i, c := range clients {
			go func() {
				var l *sqldlm.Lock
				var err error
				if i == 0 && trial%2 == 1 {
					lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
					l, err = c.Lock(lctx, name, sqldlm.Exclusive)
					cancel()
					if errors.Is(err, context.DeadlineExceeded) {
						err = sqldlm.ErrLocked // queued behind the winner, which holds on
					}
				} else {
					l, err = c.TryLock(ctx, name, sqldlm.Exclusive)
				}
				results <- result{l, err}
			}()
		}
		// At least two racers (enough for the deadlock) must be waiting for
		// the first inserter's row; the third usually is too.
		require.Eventually(t, func() bool { return lockWaits(ctx, db.DB) >= 2 }, 30*time.Second, 50*time.Millisecond,
			"the racers wait for the first inserter")
		settle := time.Now().Add(time.Second)
		for lockWaits(ctx, db.DB) < len(clients) && time.Now().Before(settle) {
			time.Sleep(50 * time.Millisecond)
		}
		require.NoError(t, tx.Rollback())
		conn.Close()
		granted := 0
		var held []*sqldlm.Lock
		for range clients {
			r := <-results
			if r.err == nil {
				granted++
				held = append(held, r.l)
				continue
			}
			require.ErrorIs(t, r.err, sqldlm.ErrLocked, "trial %d", trial)
		}
		require.Equal(t, 1, granted, "trial %d", trial)
		for _, l := range held {
			require.NoError(t, l.Release(ctx))
		}
	}
	t.Logf("deadlocks (1213) retried inside Lock/TryLock over %d trials: %d", trials, counter.n.Load())

	// The same race one level down, without the client's retry, with
	// shared and exclusive requests: how often the server picks a victim.
	d := db.Dialect
	var raw int
	for trial := range trials {
		name := fmt.Sprintf("race-raw/%d", trial)
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		tx, err := conn.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = tx.ExecContext(ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (?, 0, SYSDATE(6))`, name)
		require.NoError(t, err)
		errs := make(chan error, 3)
		for i := range 3 {
			pool := testdb.Reopen(t, testdb.MySQL, db.DSN).DB
			lease := rand.Int64()
			require.NoError(t, d.CreateLease(ctx, pool, &dialect.CreateLeaseParams{ID: lease, Owner: "raw", TTL: time.Minute}))
			mode := dialect.Exclusive
			if (i+trial)%2 == 0 {
				mode = dialect.Shared
			}
			go func() {
				_, err := d.Acquire(ctx, pool, &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: rand.Int64(), Mode: mode, Enqueue: i == 0})
				errs <- err
			}()
		}
		require.Eventually(t, func() bool { return lockWaits(ctx, db.DB) >= 2 }, 30*time.Second, 50*time.Millisecond)
		require.NoError(t, tx.Rollback())
		conn.Close()
		for range 3 {
			if err := <-errs; err != nil {
				require.ErrorIs(t, err, dialect.ErrDeadlock, "trial %d", trial)
				raw++
			}
		}
	}
	t.Logf("deadlocks (1213) the server raised to sqldlm_acquire over %d unretried trials: %d", trials, raw)
}

// (b) The reaper's range deletes (dead leases, idle name rows) run while
// clients are granted the same names and take them over from dead leases:
// no deadlock or lock wait timeout reaches a client.
func TestMySQLReaperVersusGrants(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.MySQL)
	d := db.Dialect
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	deadline := time.Now().Add(3 * time.Second)
	names := 12
	name := func() string { return fmt.Sprintf("reap/%d", rand.IntN(names)) }

	var wg sync.WaitGroup
	errs := make(chan error, 100)
	var grants, reaped, reapRetries atomic.Int64
	// Dying holders: leases of 50ms that hold names and are never renewed.
	wg.Go(func() {
		for time.Now().Before(deadline) {
			lease := rand.Int64()
			if err := d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: lease, Owner: "dying", TTL: 50 * time.Millisecond}); err != nil {
				errs <- fmt.Errorf("create lease: %w", err)
				return
			}
			for range 3 {
				_, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name(), LeaseID: lease, RequestID: rand.Int64(), Mode: dialect.Exclusive})
				if err != nil && !dialect.IsRetryable(err) {
					errs <- fmt.Errorf("dying acquire: %w", err)
					return
				}
			}
		}
	})
	// Reapers: two clients' own, plus direct passes that delete idle rows
	// at once.
	for i := range 3 {
		c := newClient(t, db, sqldlm.Config{Owner: fmt.Sprintf("worker-%d", i), TTL: 2 * time.Second, ReapInterval: 20 * time.Millisecond})
		wg.Go(func() {
			for time.Now().Before(deadline) {
				lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				l, err := c.Lock(lctx, name(), sqldlm.Exclusive)
				cancel()
				if err != nil {
					errs <- fmt.Errorf("lock: %w", err)
					return
				}
				grants.Add(1)
				if err := l.Release(ctx); err != nil {
					errs <- fmt.Errorf("release: %w", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for time.Now().Before(deadline) {
			res, err := d.Reap(ctx, db.DB, 100, 0)
			if err != nil {
				if dialect.IsRetryable(err) { // the reaper package retries these on its next pass
					reapRetries.Add(1)
					continue
				}
				errs <- fmt.Errorf("reap: %w", err)
				return
			}
			reaped.Add(int64(res.Leases + res.IdleLocks))
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Positive(t, grants.Load())
	require.Positive(t, reaped.Load())
	t.Logf("grants %d, leases and idle rows reaped %d, direct reap passes that hit a retryable error %d", grants.Load(), reaped.Load(), reapRetries.Load())
}

// (c) With innodb_lock_wait_timeout=1 on sqldlm's sessions, a grant that
// waits for a row a user's transaction holds fails with 1205, which rolls
// back only the statement; sqldlm must roll back the rest, so that no
// waiter or hold row of the failed call is ever committed and the pooled
// connection is not left inside a transaction.
func TestMySQLLockWaitTimeoutLeavesNothing(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.MySQL)
	d := db.Dialect
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	short := testdb.Reopen(t, testdb.MySQL, withParams(t, db.DSN, "innodb_lock_wait_timeout", "1")).DB
	short.SetMaxOpenConns(1)
	var timeout int
	require.NoError(t, short.QueryRowContext(ctx, `SELECT @@innodb_lock_wait_timeout`).Scan(&timeout))
	require.Equal(t, 1, timeout)

	newLease := func(pool *sql.DB, owner string) int64 {
		id := rand.Int64()
		require.NoError(t, d.CreateLease(ctx, pool, &dialect.CreateLeaseParams{ID: id, Owner: owner, TTL: time.Minute}))
		return id
	}
	holder, waiter := newLease(db.DB, "holder"), newLease(short, "waiter")
	// "held" is held by holder; "free" exists and is free.
	res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "held", LeaseID: holder, RequestID: 1, Mode: dialect.Exclusive})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	res, err = d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "free", LeaseID: holder, RequestID: 2, Mode: dialect.Exclusive})
	require.NoError(t, err)
	_, err = d.Release(ctx, db.DB, &dialect.HoldRef{Name: "free", LeaseID: holder, Token: res.Token})
	require.NoError(t, err)

	for _, tc := range []struct {
		name  string
		lock  string // what the user's transaction locks
		mode  dialect.Mode
		upto1 bool // the call may also succeed (Blocked with its waiter row)
	}{
		{"free", `SELECT * FROM sqldlm_locks WHERE name = 'free' FOR UPDATE`, dialect.Exclusive, false},
		{"held", `SELECT * FROM sqldlm_locks WHERE name = 'held' FOR UPDATE`, dialect.Exclusive, true},
		{"held", `SELECT * FROM sqldlm_leases WHERE owner = 'waiter' FOR UPDATE`, dialect.Shared, true},
		{"free", `SELECT * FROM sqldlm_leases WHERE owner = 'waiter' FOR UPDATE`, dialect.Exclusive, true},
	} {
		user, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = user.ExecContext(ctx, tc.lock)
		require.NoError(t, err)
		request := rand.Int64()
		res, err := d.Acquire(ctx, short, &dialect.AcquireParams{Name: tc.name, LeaseID: waiter, RequestID: request, Mode: tc.mode, Enqueue: true})
		require.NoError(t, user.Rollback())
		var inTx int
		require.NoError(t, short.QueryRowContext(ctx, `SELECT @@in_transaction`).Scan(&inTx))
		require.Zero(t, inTx, "%s: the pooled connection was left inside a transaction", tc.lock)
		var waiters, holds int
		require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_waiters WHERE lease_id = ? AND request_id = ?`, waiter, request).Scan(&waiters))
		require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_holders WHERE lease_id = ? AND request_id = ?`, waiter, request).Scan(&holds))
		if err != nil {
			require.ErrorIs(t, err, dialect.ErrLockTimeout, tc.lock)
			require.Zero(t, waiters+holds, "%s: a failed call left a waiter or hold row", tc.lock)
			continue
		}
		require.True(t, tc.upto1, "%s: the call did not wait for the user's row lock (%v)", tc.lock, res.Status)
		if res.Status == dialect.Blocked {
			require.Equal(t, 1, waiters)
		}
		_, err = d.Abandon(ctx, db.DB, &dialect.AbandonParams{Name: tc.name, LeaseID: waiter, RequestID: request})
		require.NoError(t, err)
	}
}

// (d) The lock operations give the same results whatever isolation the
// application left on sqldlm's sessions: REPEATABLE READ (MariaDB's
// default), READ COMMITTED, SERIALIZABLE.
func TestMySQLIsolationLevels(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.MySQL)
	_, err := db.ExecContext(context.Background(), `CREATE TABLE cells (name VARBINARY(255) PRIMARY KEY, n BIGINT NOT NULL, last_token BIGINT NOT NULL)`)
	require.NoError(t, err)
	var outcomes []levelOutcome
	for _, level := range []string{"REPEATABLE-READ", "READ-COMMITTED", "SERIALIZABLE"} {
		o, retries := runLevel(t, testdb.MySQL, withParams(t, db.DSN, "tx_isolation", "'"+level+"'"), level, `SELECT @@tx_isolation`)
		t.Logf("%s: %+v, user transactions retried after a serialization failure: %d", level, o, retries)
		outcomes = append(outcomes, o)
	}
	for i := range outcomes[1:] {
		require.Equal(t, outcomes[0], outcomes[i+1])
	}
}

// (e) A pooled session the application poisoned with SET timestamp (NOW()
// an hour off) and sql_mode=” (no strict mode): leases still expire by the
// server's real clock, and overlong names and owners are errors, never
// silently truncated into another name.
func TestMySQLPoisonedSession(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.MySQL)
	d := db.Dialect
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clean := newClient(t, db, sqldlm.Config{Owner: "clean", TTL: 2 * time.Second})
	for _, shift := range []time.Duration{-time.Hour, time.Hour} {
		poisonedDSN := withParams(t, db.DSN, "timestamp", fmt.Sprint(time.Now().Add(shift).Unix()), "sql_mode", "''")
		pool := testdb.Reopen(t, testdb.MySQL, poisonedDSN).DB
		var mode string
		var skew float64
		require.NoError(t, pool.QueryRowContext(ctx, `SELECT @@sql_mode, TIMESTAMPDIFF(SECOND, SYSDATE(), NOW())`).Scan(&mode, &skew))
		require.Empty(t, mode)
		require.InDelta(t, shift.Seconds(), skew, 60, "the session's NOW() is shifted")

		owner := "poisoned" + shift.String()
		c, err := sqldlm.New(pool, sqldlm.Config{Owner: owner, TTL: 2 * time.Second})
		require.NoError(t, err)
		name := "poison/" + shift.String()
		l, err := c.TryLock(ctx, name, sqldlm.Exclusive)
		require.NoError(t, err)
		_, err = clean.TryLock(ctx, name, sqldlm.Exclusive)
		var le *sqldlm.LockedError
		require.ErrorAs(t, err, &le)
		require.Equal(t, owner, le.Owner)
		require.Greater(t, le.ExpiresIn, time.Duration(0))
		require.LessOrEqual(t, le.ExpiresIn, 3*time.Second, "the lease's expiry follows the real clock, not NOW()")
		var left float64
		require.NoError(t, db.QueryRowContext(ctx, `SELECT TIMESTAMPDIFF(MICROSECOND, SYSDATE(6), expires_at) / 1e6 FROM sqldlm_leases WHERE owner = ?`, owner).Scan(&left))
		require.Greater(t, left, 0.0)
		require.LessOrEqual(t, left, 3.0)

		// Overlong values through the poisoned session: errors, not
		// truncation. (The client refuses them before the database; the
		// dialect is called directly.)
		lease := rand.Int64()
		err = d.CreateLease(ctx, pool, &dialect.CreateLeaseParams{ID: lease, Owner: strings.Repeat("o", 300), TTL: time.Minute})
		require.Error(t, err, "a 300-byte owner")
		require.NoError(t, d.CreateLease(ctx, pool, &dialect.CreateLeaseParams{ID: lease, Owner: "ok", TTL: time.Minute}))
		long := name + strings.Repeat("x", 300)
		_, err = d.Acquire(ctx, pool, &dialect.AcquireParams{Name: long, LeaseID: lease, RequestID: 1, Mode: dialect.Exclusive})
		require.Error(t, err, "a 300-byte name")
		var n int
		require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_locks WHERE name = ?`, long[:255]).Scan(&n))
		require.Zero(t, n, "the name was truncated to 255 bytes")

		require.NoError(t, l.Release(ctx))
		require.NoError(t, c.Close())
	}
}

// Fence in a user's transaction whose snapshot predates an operator's break
// of the lease, at each session isolation: it must refuse (or fail with a
// retryable error), never accept the broken lease.
func TestMySQLFenceAfterBreak(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.MySQL)
	d := db.Dialect
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, level := range []string{"READ-COMMITTED", "REPEATABLE-READ", "SERIALIZABLE"} {
		t.Run(level, func(t *testing.T) {
			// Fence reads the lease outside tx (schema version 5), so a break
			// committed after tx's first read is seen at REPEATABLE READ too
			// (version 4 read it in tx's read view and returned true).
			pool := testdb.Reopen(t, testdb.MySQL, withParams(t, db.DSN, "tx_isolation", "'"+level+"'")).DB
			lease := rand.Int64()
			require.NoError(t, d.CreateLease(ctx, pool, &dialect.CreateLeaseParams{ID: lease, Owner: "o", TTL: time.Minute}))
			name := "break/" + level
			res, err := d.Acquire(ctx, pool, &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: 1, Mode: dialect.Exclusive})
			require.NoError(t, err)
			tx, err := pool.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer tx.Rollback()
			var n int
			// Take the snapshot (InnoDB's RR read view) with a read of another
			// table: at SERIALIZABLE a read of the leases would lock them
			// and the break would wait for tx.
			require.NoError(t, tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_schema_version`).Scan(&n))
			broken, err := d.Break(ctx, db.DB, name, "")
			require.NoError(t, err)
			require.Len(t, broken, 1)
			ok, err := d.Fence(ctx, db.DB, tx, &dialect.HoldRef{Name: name, LeaseID: lease, Token: res.Token}, time.Minute)
			if err != nil {
				require.True(t, dialect.IsRetryable(err), "Fence failed with %v", err)
			} else {
				require.False(t, ok, "Fence on a snapshot from before the break accepted the broken lease")
			}
		})
	}
}
