package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// stallDialect makes chosen calls hang as on a black-holed network: until
// their context ends, or (gate) until the test opens the gate, whatever
// the context says, after which the real call runs.
type stallDialect struct {
	dialect.Dialect
	stallLease    atomic.Bool   // CreateLease hangs until its ctx ends
	gateLease     chan struct{} // if set, CreateLease waits for it to close, ignoring ctx
	stallReleases atomic.Int64  // so many Release calls hang until their ctx ends
	releases      atomic.Int64  // Release calls
	released      atomic.Int64  // Release calls that returned true (the hold was deleted)
	leaseCalls    atomic.Int64  // CreateLease calls
	leasesMade    atomic.Int64  // gated CreateLease calls that succeeded
	inFlight      atomic.Int64  // stalled CreateLease calls running now
	maxInFlight   atomic.Int64  // the most that ever ran at once
	stallDelete   func(id int64) bool
	onAcquire     func(ctx context.Context, p *dialect.AcquireParams)
}

func (d *stallDialect) CreateLease(ctx context.Context, db *sql.DB, p *dialect.CreateLeaseParams) error {
	d.leaseCalls.Add(1)
	if d.gateLease != nil {
		<-d.gateLease
		err := d.Dialect.CreateLease(context.WithoutCancel(ctx), db, p)
		if err == nil {
			d.leasesMade.Add(1)
		}
		return err
	}
	if d.stallLease.Load() {
		n := d.inFlight.Add(1)
		defer d.inFlight.Add(-1)
		for m := d.maxInFlight.Load(); n > m && !d.maxInFlight.CompareAndSwap(m, n); m = d.maxInFlight.Load() {
		}
		<-ctx.Done()
		return dialect.NewError(dialect.ErrConnection, "", ctx.Err())
	}
	return d.Dialect.CreateLease(ctx, db, p)
}

func (d *stallDialect) Release(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	d.releases.Add(1)
	if d.stallReleases.Add(-1) >= 0 {
		<-ctx.Done()
		return false, dialect.NewError(dialect.ErrConnection, "", ctx.Err())
	}
	ok, err := d.Dialect.Release(ctx, db, p)
	if ok && err == nil {
		d.released.Add(1)
	}
	return ok, err
}

func (d *stallDialect) DeleteLease(ctx context.Context, db *sql.DB, id int64) ([]string, error) {
	if d.stallDelete != nil && d.stallDelete(id) {
		<-ctx.Done()
		return nil, dialect.NewError(dialect.ErrConnection, "", ctx.Err())
	}
	return d.Dialect.DeleteLease(ctx, db, id)
}

func (d *stallDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	if d.onAcquire != nil {
		d.onAcquire(ctx, p)
	}
	return d.Dialect.Acquire(ctx, db, p)
}

// within runs f and fails the test unless f returns within d.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s: still blocked after %s", what, d)
	}
}

func (b *lockBundle) free(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	other := b.client(t, Config{ReapInterval: ReapDisabled})
	o, err := other.TryLock(ctx, name, Exclusive)
	require.NoError(t, err, "%q is free", name)
	require.NoError(t, o.Release(ctx))
}

// Defect 5: Do releases the lock when fn panics (the panic goes on), and
// the goroutine that watches the lock for fn ends: fn's ctx is cancelled.
func TestDoReleasesWhenFnPanics(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		c := b.client(t, Config{ReapInterval: ReapDisabled})
		var fnCtx context.Context
		func() {
			defer func() { require.Equal(t, "boom", recover(), "the panic goes on") }()
			_ = c.Do(ctx, "do/panic", Exclusive, func(ctx context.Context) error {
				fnCtx = ctx
				panic("boom")
			})
		}()
		b.free(t, ctx, "do/panic")
		require.Error(t, fnCtx.Err(), "fn's ctx was cancelled: its watcher ended")
	})
}

// Defect 11: Release of a handle that Client.Close ended returns nil and
// sends nothing to the database; Do whose fn runs while the client closes
// does not report the lock lost, and fn's ctx says why it ended.
func TestReleaseAfterClose(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := &stallDialect{Dialect: b.db.Dialect}
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "close/release", Exclusive)
		require.NoError(t, err)
		require.NoError(t, c.Close())
		require.ErrorIs(t, l.Err(), ErrReleased)
		require.NoError(t, l.Release(ctx))
		require.Zero(t, d.releases.Load(), "no release statement after Close")

		c2 := b.client(t, Config{ReapInterval: ReapDisabled})
		var cause error
		err = c2.Do(ctx, "close/do", Exclusive, func(fnCtx context.Context) error {
			require.NoError(t, c2.Close())
			<-fnCtx.Done()
			cause = context.Cause(fnCtx)
			return nil
		})
		require.NoError(t, err, "a clean shutdown is not a lost lock")
		require.ErrorIs(t, cause, ErrClosed)
		b.free(t, ctx, "close/do")
	})
}

// Defect 7: Release(context.Background()) on a database that does not
// answer returns nil within its own bound, and the janitor releases the
// lock afterwards.
func TestReleaseBackgroundIsBounded(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := &stallDialect{Dialect: b.db.Dialect}
		c := b.client(t, Config{Dialect: d, TTL: 2 * time.Second, ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "release/hang", Exclusive)
		require.NoError(t, err)
		d.stallReleases.Store(1)
		within(t, 10*time.Second, "Release(context.Background())", func() {
			require.NoError(t, l.Release(context.Background()))
		})
		// Counted once the janitor's retry has deleted the hold (a count of
		// calls, taken as the call starts, let the check below race the
		// retry's statement).
		require.Eventually(t, func() bool { return d.released.Load() >= 1 }, 10*time.Second, 10*time.Millisecond,
			"the janitor retried the release")
		require.GreaterOrEqual(t, d.releases.Load(), int64(2), "the stalled release, then the janitor's")
		b.free(t, ctx, "release/hang")
	})
}

// Defect 6: a lease creation that hangs blocks neither other callers (each
// waits with its own ctx) nor Close; it is bounded by the TTL; and a lease
// whose creation finishes after Close is deleted.
func TestLeaseCreationDoesNotHoldTheClient(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		const ttl = 2 * time.Second

		// Each creation is bounded by the TTL, even under
		// context.Background(): a waiting Lock then asks again. Others
		// wait with their own ctx, sharing the creation in flight; Close
		// does not wait for it.
		d := &stallDialect{Dialect: b.db.Dialect}
		d.stallLease.Store(true)
		c := b.client(t, Config{Dialect: d, TTL: ttl, ReapInterval: ReapDisabled})
		lockDone := make(chan error, 1)
		go func() {
			_, err := c.Lock(context.Background(), "lease/first", Exclusive)
			lockDone <- err
		}()
		require.Eventually(t, func() bool { return d.leaseCalls.Load() >= 2 }, 4*ttl, time.Millisecond,
			"the first creation ended at the TTL and the waiting Lock asked again")
		within(t, ttl/2, "TryLock with a short ctx", func() {
			short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			_, err := c.TryLock(short, "lease/second", Exclusive)
			require.ErrorIs(t, err, context.DeadlineExceeded)
		})
		require.EqualValues(t, 1, d.maxInFlight.Load(), "one creation in flight at a time, shared")
		within(t, ttl/2, "Close", func() { require.NoError(t, c.Close()) })
		require.ErrorIs(t, <-lockDone, ErrClosed)

		// A creation that completes after Close began: its lease is deleted
		// before Close returns.
		gate := make(chan struct{})
		d2 := &stallDialect{Dialect: b.db.Dialect, gateLease: gate}
		c2 := b.client(t, Config{Dialect: d2, TTL: ttl, ReapInterval: ReapDisabled, Owner: "late-lease"})
		go func() {
			_, err := c2.Lock(context.Background(), "lease/late", Exclusive)
			lockDone <- err
		}()
		require.Eventually(t, func() bool { return d2.leaseCalls.Load() == 1 }, 5*time.Second, time.Millisecond)
		closed := make(chan error, 1)
		go func() { closed <- c2.Close() }()
		require.Eventually(t, func() bool {
			c2.mu.Lock()
			defer c2.mu.Unlock()
			return c2.closing
		}, 5*time.Second, time.Millisecond)
		close(gate)
		within(t, 2*ttl, "Close", func() { require.NoError(t, <-closed) })
		require.ErrorIs(t, <-lockDone, ErrClosed)
		require.EqualValues(t, 1, d2.leasesMade.Load(), "the lease was created")
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM sqldlm_leases WHERE owner = 'late-lease'`), "and deleted")
	})
}

// Defect 12: ReleaseAll skips nil handles.
func TestReleaseAllSkipsNil(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		c := b.client(t, Config{ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "all/nil", Exclusive)
		require.NoError(t, err)
		require.NotPanics(t, func() { require.NoError(t, c.ReleaseAll(ctx, []*Lock{nil, l, nil})) })
		b.free(t, ctx, "all/nil")
	})
}

// Defect 12: LockAll returns only handles that are held when it returns.
// The first lock's lease is broken while LockAll asks for the second (the
// second is then granted under a new lease): LockAll releases both and
// starts over, and returns two held locks.
func TestLockAllStartsOverWhenAnEarlierLockWasLost(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := &stallDialect{Dialect: b.db.Dialect}
		var once sync.Once
		var acquiresOfA atomic.Int64
		d.onAcquire = func(ctx context.Context, p *dialect.AcquireParams) {
			switch p.Name {
			case "set/a":
				acquiresOfA.Add(1)
			case "set/b":
				once.Do(func() {
					_, err := b.db.Dialect.Break(ctx, b.db.DB, "set/a", "")
					require.NoError(t, err)
				})
			}
		}
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
		locks, err := c.LockAll(ctx, []Request{{Name: "set/b", Mode: Exclusive}, {Name: "set/a", Mode: Exclusive}})
		require.NoError(t, err)
		require.EqualValues(t, 2, acquiresOfA.Load(), "started over")
		for _, l := range locks {
			require.NoError(t, l.Err(), l.Name())
		}
		other := b.client(t, Config{ReapInterval: ReapDisabled})
		for _, name := range []string{"set/a", "set/b"} {
			_, err := other.TryLock(ctx, name, Exclusive)
			require.ErrorIs(t, err, ErrLocked, "%q is held in the database", name)
		}
		require.NoError(t, c.ReleaseAll(ctx, locks))
		b.free(t, ctx, "set/a")
		b.free(t, ctx, "set/b")
	})
}

// Defect 12: Close's final attempt at pending background cleanups is
// bounded in total (the TTL or 5 s), not per task.
func TestCloseFinalJanitorPassIsBounded(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		const ttl = 2 * time.Second
		d := &stallDialect{Dialect: b.db.Dialect, stallDelete: func(id int64) bool { return id < 0 }}
		c := b.client(t, Config{Dialect: d, TTL: ttl, ReapInterval: ReapDisabled})
		for i := range 8 {
			c.janitor.deleteLease(-int64(i+1), time.Now().Add(time.Hour))
		}
		start := time.Now()
		require.NoError(t, c.Close())
		// 8 tasks of TTL/2 each would take 8 s; the shared bound is 2 s.
		require.Less(t, time.Since(start), 2*ttl)
	})
}

// Defect 12: TryLock on a database that cannot be reached fails at once
// (one retry), with the connection error, while the client's lease lives.
func TestTryLockUnreachableFailsAtOnce(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		c, f := b.faulty(t, Config{ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "try/held", Exclusive) // the lease exists
		require.NoError(t, err)
		f.failAcquire.Store(true)
		within(t, 5*time.Second, "TryLock on an unreachable database", func() {
			_, err := c.TryLock(ctx, "try/unreachable", Exclusive)
			require.ErrorIs(t, err, dialect.ErrConnection)
		})
		f.failAcquire.Store(false)
		require.NoError(t, l.Err())
		require.NoError(t, l.Release(ctx))
	})
}

// Defect 12: no goroutine starts once Close has begun (a WaitGroup must not
// gain one while Close waits on it).
func TestNoGoroutineStartsAfterClose(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		c := b.client(t, Config{ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "go/close", Exclusive)
		require.NoError(t, err)
		require.NoError(t, c.Close())
		require.False(t, c.goStart(func() { t.Error("started after Close") }))
		require.True(t, errors.Is(l.Err(), ErrReleased))
	})
}
