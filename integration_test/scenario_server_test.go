package integration_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// killer ends server sessions of this test only: on PostgreSQL those of a
// pool tagged with an application_name, on MySQL those connected to this
// test's own database (every pool of the test), never the killer's own.
type killer struct {
	t  *testing.T
	db *testdb.DB
}

// pool opens a pool on the test's database tagged app (PostgreSQL).
func (k *killer) pool(app string) *testdb.DB {
	dsn := k.db.DSN
	if k.db.Kind == testdb.Postgres {
		dsn = withParam(k.t, dsn, "application_name", app)
	}
	return testdb.Reopen(k.t, k.db.Kind, dsn)
}

// kill ends the sessions of app's pool (PostgreSQL) or of the test's
// database (MySQL) and returns how many. The LISTEN connection is spared
// (S9d is TestListenerLossFallsBackToPolling).
func (k *killer) kill(app string) int {
	k.t.Helper()
	ctx := context.Background()
	if k.db.Kind == testdb.Postgres {
		var n int
		require.NoError(k.t, k.db.QueryRowContext(ctx, `SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = $1 AND pid <> pg_backend_pid() AND query NOT LIKE 'LISTEN%'`, app).Scan(&n))
		return n
	}
	conn, err := k.db.Conn(ctx)
	require.NoError(k.t, err)
	defer conn.Close()
	rows, err := conn.QueryContext(ctx, `SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()`)
	require.NoError(k.t, err)
	var ids []int64
	for rows.Next() {
		var id int64
		require.NoError(k.t, rows.Scan(&id))
		ids = append(ids, id)
	}
	require.NoError(k.t, rows.Err())
	rows.Close()
	n := 0
	for _, id := range ids {
		// An integer the server gave us: KILL takes no placeholder.
		if _, err := conn.ExecContext(ctx, fmt.Sprintf("KILL CONNECTION %d", id)); err == nil {
			n++
		}
	}
	return n
}

// killID ends one session by its id (backend pid or connection id).
func (k *killer) killID(id int64) {
	k.t.Helper()
	ctx := context.Background()
	if k.db.Kind == testdb.Postgres {
		var ok bool
		require.NoError(k.t, k.db.QueryRowContext(ctx, `SELECT pg_terminate_backend($1)`, id).Scan(&ok))
		require.True(k.t, ok)
		return
	}
	_, err := k.db.ExecContext(ctx, fmt.Sprintf("KILL CONNECTION %d", id))
	require.NoError(k.t, err)
}

// S9: the server kills the client's sessions. (a) The heartbeat's
// connection: the lease is renewed on a new connection, the lock is not
// lost. (b) A waiting Lock's connections, again and again: it is granted
// once the holder releases, and a waiter that gives up meanwhile leaves no
// waiter row. (c) The user's fenced transaction: its commit fails, the lock
// and the protected data are unchanged, and the next fenced write works.
// (d) is TestListenerLossFallsBackToPolling.
func TestS9ServerKillsSessions(t *testing.T) {
	t.Parallel()
	skipShort(t)
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			k := &killer{t: t, db: db}
			const ttl = 2 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			tag := fmt.Sprintf("s9-%d", rand.Int64())
			hooks := newHookRecorder()
			hp := k.pool(tag + "-holder")
			holder, err := sqldlm.New(hp.DB, sqldlm.Config{TTL: ttl, Owner: "holder", Hooks: hooks})
			require.NoError(t, err)
			defer holder.Close()
			wp := k.pool(tag + "-waiter")
			waiter, err := sqldlm.New(wp.DB, sqldlm.Config{TTL: ttl, Owner: "waiter"})
			require.NoError(t, err)
			defer waiter.Close()

			// (a) The heartbeat's connection.
			l, err := holder.Lock(ctx, "s9", sqldlm.Exclusive)
			require.NoError(t, err)
			hooks.waitRenewal(t, 10*time.Second)
			require.Positive(t, k.kill(tag+"-holder"), "the holder's sessions were found")
			killed := time.Now()
			require.Eventually(t, func() bool { return hooks.renewalsSince(killed) >= 3 }, 4*ttl, 10*time.Millisecond,
				"renewals go on over new connections")
			require.NoError(t, l.Err(), "no lock lost")
			require.Zero(t, hooks.lossCount())

			// (b) A waiting Lock, whose sessions are killed while it waits.
			got := make(chan error, 1)
			go func() {
				wl, err := waiter.Lock(ctx, "s9", sqldlm.Exclusive)
				if err == nil {
					err = wl.Release(ctx)
				}
				got <- err
			}()
			// The holder takes the second name first, so that the waiter's
			// request for it waits (and gives up) rather than winning it.
			other, err := holder.Lock(ctx, "s9/other-waiter", sqldlm.Exclusive)
			require.NoError(t, err)
			gaveUp := make(chan error, 1)
			go func() {
				short, cancel := context.WithTimeout(ctx, ttl)
				defer cancel()
				_, err := waiter.Lock(short, "s9/other-waiter", sqldlm.Exclusive)
				gaveUp <- err
			}()
			require.Eventually(t, func() bool {
				return count(t, db, `SELECT COUNT(*) FROM sqldlm_waiters`) >= 1
			}, 10*time.Second, 5*time.Millisecond, "the waiter waits")
			for range 5 {
				k.kill(tag + "-waiter")
				time.Sleep(100 * time.Millisecond) // the fault's rhythm
			}
			require.ErrorIs(t, <-gaveUp, context.DeadlineExceeded)
			require.NoError(t, l.Release(ctx))
			select {
			case err := <-got:
				require.NoError(t, err, "the waiter is granted after the holder releases")
			case <-time.After(20 * time.Second):
				t.Fatal("the waiter was not granted")
			}
			require.NoError(t, other.Release(ctx))
			require.Eventually(t, func() bool { return count(t, db, `SELECT COUNT(*) FROM sqldlm_waiters`) == 0 },
				2*ttl, 10*time.Millisecond, "no waiter row is left")
			require.Zero(t, count(t, db, `SELECT COUNT(*) FROM `+testdb.Holds(db.Kind)))

			// (c) The user's fenced transaction.
			l, err = holder.Lock(ctx, "s9", sqldlm.Exclusive)
			require.NoError(t, err)
			require.NoError(t, fencedWrite(ctx, hp.DB, kind, l, "before"))
			tx, err := hp.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.NoError(t, l.Fence(ctx, tx))
			_, err = tx.ExecContext(ctx, q(kind, `INSERT INTO test_journal (name, seq, token, writer) VALUES (?, 2, ?, 'killed-tx')`), "s9", l.Token())
			require.NoError(t, err)
			var id int64
			idQuery := `SELECT CONNECTION_ID()`
			if kind == testdb.Postgres {
				idQuery = `SELECT pg_backend_pid()`
			}
			require.NoError(t, tx.QueryRowContext(ctx, idQuery).Scan(&id))
			k.killID(id)
			require.Error(t, tx.Commit(), "the killed transaction does not commit")
			require.Zero(t, count(t, db, `SELECT COUNT(*) FROM test_journal WHERE writer = 'killed-tx'`))
			require.NoError(t, l.Err(), "the lock is unchanged")
			var token int64
			require.NoError(t, db.QueryRowContext(ctx, q(kind, `SELECT token FROM `+testdb.Holds(kind)+` WHERE name = ?`), "s9").Scan(&token))
			require.Equal(t, l.Token(), token)
			require.NoError(t, fencedWrite(ctx, hp.DB, kind, l, "after"))
			require.NoError(t, l.Release(ctx))
			checkJournals(t, db, 2)
		})
	}
}
