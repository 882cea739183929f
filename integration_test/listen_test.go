package integration_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// When the server kills a client's LISTEN connection, its waiters still
// get the lock (by polling), and the client listens again.
func TestListenerLossFallsBackToPolling(t *testing.T) {
	t.Parallel()
	db := setup(t, testdb.Postgres)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	holder := newClient(t, db, sqldlm.Config{TTL: 5 * time.Second})
	waiter := newClient(t, db, sqldlm.Config{TTL: 5 * time.Second})

	var channel string
	require.NoError(t, db.QueryRowContext(ctx, `SELECT 'sqldlm_' || substr(md5(current_schema()), 1, 16)`).Scan(&channel))
	listeners := func() int {
		var n int
		require.NoError(t, db.QueryRowContext(ctx,
			`SELECT COUNT(*) FROM pg_stat_activity WHERE query = 'LISTEN "' || $1 || '"'`, channel).Scan(&n))
		return n
	}
	require.Eventually(t, func() bool { return listeners() == 2 }, 10*time.Second, 10*time.Millisecond, "both clients listen")

	l, err := holder.Lock(ctx, "node/3", sqldlm.Exclusive)
	require.NoError(t, err)
	got := make(chan error, 1)
	go func() {
		l, err := waiter.Lock(ctx, "node/3", sqldlm.Exclusive)
		if err == nil {
			err = l.Release(ctx)
		}
		got <- err
	}()
	var killed int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE query = 'LISTEN "' || $1 || '"'`, channel).Scan(&killed))
	require.Equal(t, 2, killed)

	require.NoError(t, l.Release(ctx))
	select {
	case err := <-got:
		require.NoError(t, err, "the waiter got the lock without its listener")
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not woken without its listener")
	}
	require.Eventually(t, func() bool { return listeners() == 2 }, 15*time.Second, 20*time.Millisecond, "the clients listen again")
}

// A watch on PostgreSQL whose client loses its LISTEN connection misses
// nothing for good: a change made while the listener is down is reported
// once the client listens again (it re-reads the group then), although
// the watch would not poll for an hour.
func TestWatchSurvivesListenerLoss(t *testing.T) {
	t.Parallel()
	db := setup(t, testdb.Postgres)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	obs := newClient(t, db, sqldlm.Config{TTL: 5 * time.Second, WatchInterval: time.Hour})
	member := newClient(t, db, sqldlm.Config{TTL: 5 * time.Second})
	var channel string
	require.NoError(t, db.QueryRowContext(ctx, `SELECT 'sqldlm_' || substr(md5(current_schema()), 1, 16)`).Scan(&channel))
	listening := func() bool {
		var n int
		require.NoError(t, db.QueryRowContext(ctx,
			`SELECT COUNT(*) FROM pg_stat_activity WHERE query = 'LISTEN "' || $1 || '"'`, channel).Scan(&n))
		return n >= 1
	}
	w, err := obs.Watch(ctx, "g")
	require.NoError(t, err)
	defer w.Close()
	require.Equal(t, sqldlm.Resync, (<-w.Events()).Kind)
	require.Eventually(t, listening, 10*time.Second, 10*time.Millisecond)

	// Kill the listeners and make the change at once: the notification may
	// reach nobody, and the reconnection (with backoff) re-reads the group.
	var killed int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE query = 'LISTEN "' || $1 || '"'`, channel).Scan(&killed))
	require.GreaterOrEqual(t, killed, 1)
	_, err = member.Join(ctx, "g", "m")
	require.NoError(t, err)
	select {
	case e := <-w.Events():
		require.Equal(t, sqldlm.MemberJoined, e.Kind)
		require.Equal(t, "m", e.Member.ID)
	case <-ctx.Done():
		t.Fatal("the join made while the listener was down was never reported")
	}
}
