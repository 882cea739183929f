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
	names  chan string
	done   chan error
	cancel context.CancelFunc
}

func listen(t *testing.T, db *sql.DB) *listener {
	t.Helper()
	n, ok := postgres.Dialect().(dialect.Notifier)
	require.True(t, ok, "the PostgreSQL dialect is a Notifier")
	ctx, cancel := context.WithCancel(context.Background())
	l := &listener{names: make(chan string, 100), done: make(chan error, 1), cancel: cancel}
	ready := make(chan struct{})
	go func() {
		l.done <- n.Listen(ctx, db, func() { close(ready) }, func(name string) { l.names <- name })
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

func (l *listener) next(t *testing.T) string {
	t.Helper()
	select {
	case name := <-l.names:
		return name
	case err := <-l.done:
		t.Fatalf("listener ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no notification")
	}
	return ""
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
	require.Equal(t, "node/1", sameSchema.next(t))

	// Notifications reach a listener in commit order: had the other schema's
	// listener heard node/1, it would hear it before this later release.
	grantRelease(other.DB, "marker")
	require.Equal(t, "marker", otherSchema.next(t), "a release in another schema is not delivered")
	select {
	case name := <-sameSchema.names:
		t.Fatalf("the other schema's release reached this schema's listener: %q", name)
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
