package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

// Scenario S15 (RELIABILITY-PLAN §4.1, §7): PostgreSQL isolation levels and
// stale snapshots. An application may set default_transaction_isolation for
// its database; sqldlm's statements then run at that level too (each is one
// autocommit statement calling a PL/pgSQL function, with no isolation of
// its own), and the user's Fence runs at the user's level.

// pgOwnDatabase creates a database of the test's own on the shared server
// (ALTER DATABASE must not touch the shared one), migrated, dropped when the
// test ends. It returns an admin pool on it and its sqldlm DSN.
func pgOwnDatabase(t *testing.T) (*sql.DB, string) {
	t.Helper()
	base := os.Getenv("SQLDLM_TEST_POSTGRES_DSN")
	if base == "" {
		if testdb.Required(testdb.Postgres) {
			t.Fatal("SQLDLM_TEST_POSTGRES_DSN is unset")
		}
		t.Skip("S15 needs SQLDLM_TEST_POSTGRES_DSN (it creates a database of its own)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	server, _, err := dsn.Open(ctx, base)
	require.NoError(t, err)
	t.Cleanup(func() { server.Close() })
	name := fmt.Sprintf("sqldlm_t_%d_%x", time.Now().Unix(), rand.Uint64())
	_, err = server.ExecContext(ctx, `CREATE DATABASE `+name)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := server.ExecContext(ctx, `DROP DATABASE `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	require.NoError(t, err)
	u.Path = "/" + name
	own := u.String()
	admin := testdb.Reopen(t, testdb.Postgres, own)
	_, err = migrations.Up(ctx, admin.DB, postgres.Dialect())
	require.NoError(t, err)
	_, err = admin.ExecContext(ctx, `CREATE TABLE cells (name text PRIMARY KEY, n bigint NOT NULL, last_token bigint NOT NULL)`)
	require.NoError(t, err)
	return admin.DB, own
}

// setIsolation makes level the default of new sessions in the test's own
// database; pools opened afterwards use it.
func setIsolation(t *testing.T, admin *sql.DB, level string) {
	t.Helper()
	var db string
	require.NoError(t, admin.QueryRow(`SELECT current_database()`).Scan(&db))
	_, err := admin.Exec(`ALTER DATABASE ` + db + ` SET default_transaction_isolation = '` + level + `'`)
	require.NoError(t, err)
}

func isSerialization(err error) bool {
	return errors.Is(err, dialect.ErrSerialization) || errors.Is(err, dialect.ErrDeadlock)
}

// levelOutcome is what the conformance-ish run observed at one level; it
// must be the same at every level.
type levelOutcome struct {
	Grants, Exclusive, FencedCommits, Counter int
	Overlaps, TokenRegressions                int
	TryLockConflict, UpgradeDowngrade, Shown  bool
}

// TestPostgresIsolationLevels runs the lock operations with the database's
// default isolation at READ COMMITTED, REPEATABLE READ and SERIALIZABLE:
// the outcomes are the same, sqldlm's own calls never fail, and a user's
// fenced transaction either commits or fails with a serialization error
// (to be retried), never anything else.
func TestPostgresIsolationLevels(t *testing.T) {
	t.Parallel()
	admin, own := pgOwnDatabase(t)
	var outcomes []levelOutcome
	for _, level := range []string{"read committed", "repeatable read", "serializable"} {
		setIsolation(t, admin, level)
		o, serializationRetries := runLevel(t, testdb.Postgres, own, level, `SHOW transaction_isolation`)
		t.Logf("%s: %+v, user transactions retried after a serialization failure: %d", level, o, serializationRetries)
		outcomes = append(outcomes, o)
	}
	for i := range outcomes[1:] {
		require.Equal(t, outcomes[0], outcomes[i+1])
	}
}

// runLevel runs the conformance-ish workload through new pools on rawDSN,
// whose sessions must report level to shownQuery.
func runLevel(t *testing.T, kind, rawDSN, level, shownQuery string) (levelOutcome, int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var o levelOutcome
	var clients []*sqldlm.Client
	var pools []*sql.DB
	for i := range 3 {
		pool := testdb.Reopen(t, kind, rawDSN)
		var shown string
		require.NoError(t, pool.QueryRowContext(ctx, shownQuery).Scan(&shown))
		require.Equal(t, level, shown, "the new session's isolation")
		c, err := sqldlm.New(pool.DB, sqldlm.Config{Owner: fmt.Sprintf("c%d", i), TTL: 2 * time.Second, ReapInterval: 300 * time.Millisecond})
		require.NoError(t, err)
		defer c.Close()
		clients = append(clients, c)
		pools = append(pools, pool.DB)
	}
	o.Shown = true
	cell := "hot/" + level
	_, err := pools[0].ExecContext(ctx, q(kind, `INSERT INTO cells VALUES (?, 0, 0)`), cell)
	require.NoError(t, err)

	var (
		mu                        sync.Mutex
		exclusive, shared         atomic.Int64
		lastToken                 int64
		retries                   int
		errs                      = make(chan error, 64)
		grants, exclusives, fence atomic.Int64
		overlaps, regressions     atomic.Int64
	)
	var wg sync.WaitGroup
	for ci, c := range clients {
		for g := range 2 {
			wg.Go(func() {
				for i := range 8 {
					mode := sqldlm.Exclusive
					if (ci+g+i)%3 == 0 {
						mode = sqldlm.Shared
					}
					l, err := c.Lock(ctx, cell, mode)
					if err != nil {
						errs <- fmt.Errorf("lock: %w", err)
						return
					}
					grants.Add(1)
					if mode == sqldlm.Exclusive {
						exclusives.Add(1)
						if exclusive.Add(1) != 1 || shared.Load() != 0 {
							overlaps.Add(1)
						}
						mu.Lock()
						if l.Token() <= lastToken {
							regressions.Add(1)
						}
						lastToken = l.Token()
						mu.Unlock()
						// A fenced write in the user's transaction, at the
						// database's default level.
						for attempt := 0; ; attempt++ {
							err := fencedIncrement(ctx, kind, pools[ci], l, cell)
							if err == nil {
								fence.Add(1)
								break
							}
							if !isSerialization(err) || attempt == 20 {
								errs <- fmt.Errorf("fenced write: %w", err)
								break
							}
							mu.Lock()
							retries++
							mu.Unlock()
						}
						exclusive.Add(-1)
					} else {
						if shared.Add(1); exclusive.Load() != 0 {
							overlaps.Add(1)
						}
						shared.Add(-1)
					}
					if err := l.Release(ctx); err != nil {
						errs <- fmt.Errorf("release: %w", err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err, level)
	}
	o.Grants, o.Exclusive, o.FencedCommits = int(grants.Load()), int(exclusives.Load()), int(fence.Load())
	o.Overlaps, o.TokenRegressions = int(overlaps.Load()), int(regressions.Load())
	require.NoError(t, pools[0].QueryRowContext(ctx, q(kind, `SELECT n FROM cells WHERE name = ?`), cell).Scan(&o.Counter))

	// TryLock conflict, upgrade and downgrade.
	l, err := clients[0].TryLock(ctx, "x/"+level, sqldlm.Shared)
	require.NoError(t, err)
	_, err = clients[1].TryLock(ctx, "x/"+level, sqldlm.Exclusive)
	var le *sqldlm.LockedError
	o.TryLockConflict = errors.As(err, &le) && le.Owner == "c0"
	require.NoError(t, l.Upgrade(ctx))
	require.NoError(t, l.Downgrade(ctx))
	o.UpgradeDowngrade = l.Mode() == sqldlm.Shared
	require.NoError(t, l.Release(ctx))
	return o, retries
}

// fencedIncrement is a user's transaction at the database's default level:
// Fence, then a write that checks the token.
func fencedIncrement(ctx context.Context, kind string, db *sql.DB, l *sqldlm.Lock, cell string) error {
	d := testdb.Dialects()[kind]
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := l.Fence(ctx, tx); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, q(kind, `UPDATE cells SET n = n + 1, last_token = ? WHERE name = ? AND last_token < ?`), l.Token(), cell, l.Token())
	if err != nil {
		return d.ClassifyError(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("token %d is not above the cell's last token", l.Token())
	}
	return d.ClassifyError(tx.Commit())
}

// TestPostgresStaleSnapshots: deterministic interleavings of a user's
// transaction, or a blocked statement, with the change that makes its
// answer stale, at each isolation level.
func TestPostgresStaleSnapshots(t *testing.T) {
	t.Parallel()
	admin, own := pgOwnDatabase(t)
	d := postgres.Dialect()
	for _, level := range []string{"read committed", "repeatable read", "serializable"} {
		setIsolation(t, admin, level)
		pool := testdb.Reopen(t, testdb.Postgres, own).DB
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		hold := func(name string, ttl time.Duration) (int64, *dialect.HoldRef) {
			lease := rand.Int64()
			require.NoError(t, d.CreateLease(ctx, pool, &dialect.CreateLeaseParams{ID: lease, Owner: "o", TTL: ttl}))
			res, err := d.Acquire(ctx, pool, &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: rand.Int64(), Mode: dialect.Exclusive})
			require.NoError(t, err)
			require.Equal(t, dialect.Granted, res.Status)
			return lease, &dialect.HoldRef{Name: name, LeaseID: lease, Token: res.Token}
		}

		t.Run(level+"/FenceAfterLongTransaction", func(t *testing.T) {
			// The lease expires while the user's transaction sleeps: now()
			// is still the transaction's start, when the lease was live.
			_, ref := hold("sleep/"+level, time.Second)
			tx, err := pool.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer tx.Rollback()
			var start time.Time
			require.NoError(t, tx.QueryRowContext(ctx, `SELECT now()`).Scan(&start))
			_, err = tx.ExecContext(ctx, `SELECT pg_sleep(2)`)
			require.NoError(t, err)
			ok, err := d.Fence(ctx, pool, tx, ref, time.Minute)
			require.NoError(t, err)
			require.False(t, ok, "Fence accepted a lease that expired during the transaction")
		})

		t.Run(level+"/FenceAfterBreak", func(t *testing.T) {
			// The user's snapshot predates an operator's break.
			_, ref := hold("break/"+level, time.Minute)
			tx, err := pool.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer tx.Rollback()
			_, err = tx.ExecContext(ctx, `SELECT count(*) FROM sqldlm_leases`) // takes the snapshot
			require.NoError(t, err)
			broken, err := d.Break(ctx, pool, ref.Name, "")
			require.NoError(t, err)
			require.Len(t, broken, 1)
			ok, err := d.Fence(ctx, pool, tx, ref, time.Minute)
			if err != nil {
				require.True(t, isSerialization(err), "Fence failed with %v, want a serialization failure", err)
			} else {
				require.False(t, ok, "Fence on a snapshot from before the break accepted the broken lease")
			}
		})

		t.Run(level+"/FenceDoesNotBlockRenewals", func(t *testing.T) {
			// Whatever Fence locks to detect a stale snapshot, the lease's
			// renewals go on while the fenced transaction is open.
			lease, ref := hold("pinned/"+level, time.Minute)
			tx, err := pool.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer tx.Rollback()
			ok, err := d.Fence(ctx, pool, tx, ref, time.Minute)
			require.NoError(t, err)
			require.True(t, ok)
			renewCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			ok, err = d.RenewLease(renewCtx, pool, lease)
			require.NoError(t, err, "a renewal waited for the fenced transaction")
			require.True(t, ok)
			require.NoError(t, tx.Commit())
		})

		t.Run(level+"/RenewalBlockedBehindBreak", func(t *testing.T) {
			// A break holds the lease row; a renewal waits behind it, and
			// after the break commits it must update nothing (EvalPlanQual
			// re-checks broken_at on the new row version) or fail.
			lease, ref := hold("renew/"+level, time.Minute)
			conn, err := pool.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			tx, err := conn.BeginTx(ctx, nil)
			require.NoError(t, err)
			defer tx.Rollback()
			var n int
			require.NoError(t, tx.QueryRowContext(ctx, `SELECT count(*) FROM sqldlm_break($1, '')`, ref.Name).Scan(&n))
			require.Equal(t, 1, n)
			var breaker int
			require.NoError(t, tx.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&breaker))

			renewed := make(chan error, 1)
			var ok bool
			go func() {
				var err error
				ok, err = d.RenewLease(ctx, pool, lease)
				renewed <- err
			}()
			require.Eventually(t, func() bool { // the renewal waits for the breaker's row lock
				var waiting int
				err := pool.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
					WHERE wait_event_type = 'Lock' AND $1 = ANY(pg_blocking_pids(pid))`, breaker).Scan(&waiting)
				return err == nil && waiting == 1
			}, 20*time.Second, 5*time.Millisecond)
			require.NoError(t, tx.Commit())
			if err := <-renewed; err != nil {
				require.True(t, isSerialization(err), "renewal failed with %v", err)
			} else {
				require.False(t, ok, "a renewal blocked behind a break extended the broken lease")
			}
			var brokenAt sql.NullTime
			require.NoError(t, pool.QueryRowContext(ctx, `SELECT broken_at FROM sqldlm_leases WHERE id = $1`, lease).Scan(&brokenAt))
			require.True(t, brokenAt.Valid)
		})
	}
}
