package postgres_test

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// listener runs Listen on db in the background and delivers what it hears.
type listener struct {
	wakes  chan dialect.Wakeup
	done   chan error
	cancel context.CancelFunc
}

func listen(t *testing.T, db *sql.DB) *listener {
	t.Helper()
	n, ok := postgres.Dialect().(dialect.Notifier)
	require.True(t, ok, "the PostgreSQL dialect is a Notifier")
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{wakes: make(chan dialect.Wakeup, 100), done: make(chan error, 1), cancel: cancel}
	ready := make(chan struct{})
	go func() {
		l.done <- n.Listen(ctx, db, func() { close(ready) }, func(w dialect.Wakeup) { l.wakes <- w })
	}()
	t.Cleanup(func() { l.stop(t) })
	select {
	case <-ready:
	case err := <-l.done:
		t.Fatalf("listen: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("listener not ready")
	}
	return l
}

func (l *listener) next(t *testing.T) dialect.Wakeup {
	t.Helper()
	select {
	case w := <-l.wakes:
		return w
	case err := <-l.done:
		t.Fatalf("listener ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no notification")
	}
	return dialect.Wakeup{}
}

func (l *listener) stop(t *testing.T) {
	if l.cancel == nil {
		return
	}
	l.cancel()
	l.cancel = nil
	select {
	case err := <-l.done:
		require.Error(t, err, "Listen returns the reason it stopped")
	case <-time.After(10 * time.Second):
		t.Error("Listen did not return after its context ended")
	}
}

// A release in one pool wakes a listener on another pool of the same schema,
// and not a listener on another schema of the same database.
func TestListenDeliversReleasesOfItsSchemaOnly(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	a := testdb.OpenMigrated(t, testdb.Postgres)
	other := testdb.OpenMigrated(t, testdb.Postgres) // another schema

	sameSchema := listen(t, testdb.Reopen(t, a.Kind, a.DSN).DB)
	otherSchema := listen(t, other.DB)

	grantRelease := func(db *sql.DB, name string) {
		t.Helper()
		lease := rand.Int64()
		require.NoError(t, d.CreateLease(ctx, db, &dialect.CreateLeaseParams{ID: lease, Owner: "o", TTL: time.Minute}))
		res, err := d.Acquire(ctx, db, &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: rand.Int64(), Mode: dialect.Exclusive})
		require.NoError(t, err)
		require.Equal(t, dialect.Granted, res.Status)
		// Releases notify only when someone waits: queue a waiter.
		waiter := rand.Int64()
		require.NoError(t, d.CreateLease(ctx, db, &dialect.CreateLeaseParams{ID: waiter, Owner: "w", TTL: time.Minute}))
		blocked, err := d.Acquire(ctx, db, &dialect.AcquireParams{Name: name, LeaseID: waiter, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true})
		require.NoError(t, err)
		require.Equal(t, dialect.Blocked, blocked.Status)
		ok, err := d.Release(ctx, db, &dialect.HoldRef{Name: name, LeaseID: lease, Token: res.Token})
		require.NoError(t, err)
		require.True(t, ok)
	}

	grantRelease(a.DB, "node/1")
	require.Equal(t, "node/1", sameSchema.next(t).Name)

	// Notifications reach a listener in commit order: had the other schema's
	// listener heard node/1, it would hear it before this later release.
	grantRelease(other.DB, "marker")
	require.Equal(t, "marker", otherSchema.next(t).Name, "a release in another schema is not delivered")
	select {
	case w := <-sameSchema.wakes:
		t.Fatalf("the other schema's release reached this schema's listener: %+v", w)
	default:
	}
}

// When Listen ends, its connection does not go back to the pool still
// listening.
func TestListenDiscardsItsConnection(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	pool := testdb.Reopen(t, db.Kind, db.DSN).DB
	pool.SetMaxOpenConns(1)
	l := listen(t, pool)
	l.stop(t)
	var channels int
	require.NoError(t, pool.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_listening_channels()`).Scan(&channels))
	require.Zero(t, channels, "the pool's connection is not listening")
}

// A release notifies only the head of the name's queue, addressed to its
// request: the first waiter, or, when it is shared, every shared waiter up
// to the first exclusive one. Waiters whose lease is dead are skipped.
func TestReleaseWakesOnlyTheHeadOfTheQueue(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	l := listen(t, testdb.Reopen(t, db.Kind, db.DSN).DB)

	lease := func(ttl time.Duration) int64 {
		id := rand.Int64()
		require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: id, Owner: "o", TTL: ttl}))
		return id
	}
	type req struct{ lease, id int64 }
	acquire := func(name string, r req, mode dialect.Mode, want dialect.AcquireStatus) int64 {
		t.Helper()
		res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: r.lease, RequestID: r.id, Mode: mode, Enqueue: true})
		require.NoError(t, err)
		require.Equal(t, want, res.Status)
		return res.Token
	}
	release := func(name string, r req, token int64) {
		t.Helper()
		ok, err := d.Release(ctx, db.DB, &dialect.HoldRef{Name: name, LeaseID: r.lease, Token: token})
		require.NoError(t, err)
		require.True(t, ok)
	}
	// wakes collects the notifications up to the marker's. Each marker is a
	// new request: a withdrawn one is never queued again.
	markerLease := lease(time.Minute)
	markerHolder := req{lease(time.Minute), rand.Int64()}
	wakes := func() []dialect.Wakeup {
		t.Helper()
		marker := req{markerLease, rand.Int64()}
		tok := acquire("marker", markerHolder, dialect.Exclusive, dialect.Granted)
		acquire("marker", marker, dialect.Exclusive, dialect.Blocked)
		release("marker", markerHolder, tok)
		var out []dialect.Wakeup
		for {
			w := l.next(t)
			if w.Name == "marker" {
				require.Equal(t, dialect.Wakeup{Name: "marker", LeaseID: marker.lease, RequestID: marker.id}, w)
				_, err := d.Abandon(ctx, db.DB, &dialect.AbandonParams{Name: "marker", LeaseID: marker.lease, RequestID: marker.id})
				require.NoError(t, err)
				return out
			}
			out = append(out, w)
		}
	}

	// Exclusive waiters: only the first is woken.
	holder := req{lease(time.Minute), rand.Int64()}
	tok := acquire("x", holder, dialect.Exclusive, dialect.Granted)
	dead := req{lease(300 * time.Millisecond), rand.Int64()}
	acquire("x", dead, dialect.Exclusive, dialect.Blocked)
	w1, w2, w3 := req{lease(time.Minute), rand.Int64()}, req{lease(time.Minute), rand.Int64()}, req{lease(time.Minute), rand.Int64()}
	acquire("x", w1, dialect.Exclusive, dialect.Blocked)
	acquire("x", w2, dialect.Exclusive, dialect.Blocked)
	acquire("x", w3, dialect.Shared, dialect.Blocked)
	require.Eventually(t, func() bool {
		var expired bool
		require.NoError(t, db.QueryRowContext(ctx,
			`SELECT expires_at <= clock_timestamp() FROM sqldlm_leases WHERE id = $1`, dead.lease).Scan(&expired))
		return expired
	}, 10*time.Second, 50*time.Millisecond, "the first waiter's lease expires")
	release("x", holder, tok)
	require.Equal(t, []dialect.Wakeup{{Name: "x", LeaseID: w1.lease, RequestID: w1.id}}, wakes(),
		"the first live waiter, and no one behind it")

	// Shared waiters at the head are woken together, up to the first
	// exclusive one.
	tok = acquire("s", holder, dialect.Exclusive, dialect.Granted)
	s1, s2, x3, s4 := req{lease(time.Minute), rand.Int64()}, req{lease(time.Minute), rand.Int64()}, req{lease(time.Minute), rand.Int64()}, req{lease(time.Minute), rand.Int64()}
	acquire("s", s1, dialect.Shared, dialect.Blocked)
	acquire("s", s2, dialect.Shared, dialect.Blocked)
	acquire("s", x3, dialect.Exclusive, dialect.Blocked)
	acquire("s", s4, dialect.Shared, dialect.Blocked)
	release("s", holder, tok)
	got := wakes()
	require.ElementsMatch(t, []dialect.Wakeup{{Name: "s", LeaseID: s1.lease, RequestID: s1.id}, {Name: "s", LeaseID: s2.lease, RequestID: s2.id}}, got)
}
