package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// faultyDialect wraps a real dialect to count renewals and to make chosen
// operations fail as if the database could not be reached.
type faultyDialect struct {
	dialect.Dialect
	renewCalls   atomic.Int64
	failRenew    atomic.Bool
	failRelease  atomic.Bool
	failAcquire  atomic.Bool
	failDelete   atomic.Bool
	releaseCalls atomic.Int64
}

func (f *faultyDialect) DeleteLease(ctx context.Context, db *sql.DB, id int64) ([]string, error) {
	if f.failDelete.Load() {
		return nil, errUnreachable
	}
	return f.Dialect.DeleteLease(ctx, db, id)
}

var errUnreachable = &dialect.Error{Kind: dialect.ErrConnection, Message: "injected: database unreachable"}

func (f *faultyDialect) RenewLease(ctx context.Context, db *sql.DB, id int64) (bool, error) {
	f.renewCalls.Add(1)
	if f.failRenew.Load() {
		return false, errUnreachable
	}
	return f.Dialect.RenewLease(ctx, db, id)
}

func (f *faultyDialect) Release(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	f.releaseCalls.Add(1)
	if f.failRelease.Load() {
		return false, errUnreachable
	}
	return f.Dialect.Release(ctx, db, p)
}

func (f *faultyDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	if f.failAcquire.Load() {
		return nil, errUnreachable
	}
	return f.Dialect.Acquire(ctx, db, p)
}

// lockBundle is one test's database, reachable through several pools.
type lockBundle struct {
	db   *testdb.DB
	kind string
}

// forEachKind runs test on every dialect.
func forEachKind(t *testing.T, test func(t *testing.T, b *lockBundle)) {
	t.Helper()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.OpenMigrated(t, kind)
			test(t, &lockBundle{db: db, kind: kind})
		})
	}
}

// client returns a new Client on a pool of its own (as another process
// would have), closed when the test ends.
func (b *lockBundle) client(t *testing.T, cfg Config) *Client {
	t.Helper()
	pool := testdb.Reopen(t, b.kind, b.db.DSN)
	if cfg.TTL == 0 {
		cfg.TTL = 2 * time.Second
	}
	c, err := New(pool.DB, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func (b *lockBundle) faulty(t *testing.T, cfg Config) (*Client, *faultyDialect) {
	t.Helper()
	f := &faultyDialect{Dialect: b.db.Dialect}
	cfg.Dialect = f
	return b.client(t, cfg), f
}

func (b *lockBundle) count(t *testing.T, query string) int {
	t.Helper()
	var n int
	require.NoError(t, b.db.QueryRowContext(context.Background(), query).Scan(&n))
	return n
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Invariant 1: under many goroutines of several clients, never two
// exclusive holders, and never a shared holder beside an exclusive one.
func TestMutualExclusion(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		var exclusive, shared atomic.Int64
		var grants atomic.Int64
		var lastToken atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 100)
		for range 3 {
			c := b.client(t, Config{})
			for g := range 3 {
				wg.Go(func() {
					for i := range 12 {
						mode := Exclusive
						if (g+i)%3 == 0 {
							mode = Shared
						}
						l, err := c.Lock(ctx, "hot", mode)
						if err != nil {
							errs <- err
							return
						}
						grants.Add(1)
						if mode == Exclusive {
							if tok := l.Token(); tok <= lastToken.Swap(tok) {
								errs <- fmt.Errorf("exclusive token %d not above the previous one", tok)
							}
							if exclusive.Add(1) != 1 || shared.Load() != 0 {
								errs <- errors.New("exclusive holder beside another holder")
							}
							exclusive.Add(-1)
						} else {
							if shared.Add(1); exclusive.Load() != 0 {
								errs <- errors.New("shared holder beside an exclusive one")
							}
							shared.Add(-1)
						}
						if err := l.Release(ctx); err != nil {
							errs <- err
							return
						}
					}
				})
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.EqualValues(t, 3*3*12, grants.Load())
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)))
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`))
	})
}

// A Lock whose ctx ends while the name is held says who held it: the error
// matches ctx's error, and carries the holder as TryLock's does.
func TestLockTimeoutReportsHolder(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a := b.client(t, Config{Owner: "conductor-1"})
		c := b.client(t, Config{Owner: "conductor-2"})
		l, err := a.Lock(ctx, "node/43", Shared)
		require.NoError(t, err)
		// Long enough for the first attempt to come back, whose answer
		// names the holder, even on a loaded machine (200ms was not, once).
		wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		_, err = c.Lock(wctx, "node/43", Exclusive)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorIs(t, err, ErrLocked)
		var le *LockedError
		require.ErrorAs(t, err, &le)
		require.Equal(t, "conductor-1", le.Owner)
		require.Equal(t, Shared, le.Mode)
		require.Equal(t, `sqldlm: lock "node/43": context deadline exceeded while waiting for "node/43": held shared by "conductor-1" (lease expires in `,
			err.Error()[:strings.Index(err.Error(), " in ")+4])
		var oe *OpError
		require.ErrorAs(t, err, &oe, "the operation is named")

		// A ctx that ends before any attempt has nothing to report.
		done, cancel2 := context.WithCancel(ctx)
		cancel2()
		_, err = c.Lock(done, "node/43", Exclusive)
		require.ErrorIs(t, err, context.Canceled)
		require.NotErrorIs(t, err, ErrLocked)
		require.NoError(t, l.Release(ctx))
	})
}

func TestTryLockReportsHolder(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a := b.client(t, Config{Owner: "conductor-1"})
		c := b.client(t, Config{Owner: "conductor-2"})
		l, err := a.TryLock(ctx, "node/42", Exclusive)
		require.NoError(t, err)
		_, err = c.TryLock(ctx, "node/42", Shared)
		require.ErrorIs(t, err, ErrLocked)
		var le *LockedError
		require.ErrorAs(t, err, &le)
		require.Equal(t, "conductor-1", le.Owner)
		require.Equal(t, Exclusive, le.Mode)
		require.Positive(t, le.ExpiresIn)
		require.Contains(t, err.Error(), `"node/42" is locked: held exclusive by "conductor-1"`)

		// Handles of one client conflict as those of two processes do.
		_, err = a.TryLock(ctx, "node/42", Exclusive)
		require.ErrorIs(t, err, ErrLocked)
		require.NoError(t, l.Release(ctx))
		l2, err := c.TryLock(ctx, "node/42", Exclusive)
		require.NoError(t, err)
		require.Greater(t, l2.Token(), l.Token())
	})
}

func TestInvalidInput(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	c, err := New(db.DB, Config{})
	require.NoError(t, err)
	defer c.Close()
	ctx := testCtx(t)
	for _, name := range []string{"", string(make([]byte, 256)), "bad\xffutf8", "nul\x00inside"} {
		_, err := c.TryLock(ctx, name, Exclusive)
		require.ErrorIs(t, err, ErrInvalidName, "%q", name)
		_, err = c.Lock(ctx, name, Shared)
		require.ErrorIs(t, err, ErrInvalidName, "%q", name)
	}
	_, err = c.TryLock(ctx, "x", Mode(7))
	require.ErrorContains(t, err, "invalid mode Mode(7)")
	require.Zero(t, countRows(t, db, `SELECT COUNT(*) FROM sqldlm_leases`), "bad input wrote nothing")
}

func countRows(t *testing.T, db *testdb.DB, query string) int {
	var n int
	require.NoError(t, db.QueryRowContext(context.Background(), query).Scan(&n))
	return n
}

// A cancelled waiter returns ctx's error and leaves no waiter row behind
// (at once, or soon after from the background).
func TestLockCancelledLeavesNoWaiter(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, c := b.client(t, Config{}), b.client(t, Config{})
		l, err := a.Lock(ctx, "n", Exclusive)
		require.NoError(t, err)
		waitCtx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Lock(waitCtx, "n", Exclusive)
			errc <- err
		}()
		require.Eventually(t, func() bool { return b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`) == 1 },
			10*time.Second, 5*time.Millisecond, "the waiter is recorded")
		cancel()
		require.ErrorIs(t, <-errc, context.Canceled)
		// Lock waits only briefly for the withdrawal (min(TTL/10, 250ms)),
		// then the janitor finishes it.
		require.Eventually(t, func() bool { return b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`) == 0 },
			10*time.Second, 5*time.Millisecond, "no waiter row is left")
		require.NoError(t, l.Release(ctx))
	})
}

// Invariant 8: of two shared holders upgrading at once, one fails at once;
// the other is granted, with a new token, when the first lets go.
func TestUpgrade(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, c := b.client(t, Config{}), b.client(t, Config{})
		la, err := a.Lock(ctx, "stack/7", Shared)
		require.NoError(t, err)
		lc, err := c.Lock(ctx, "stack/7", Shared)
		require.NoError(t, err)
		before := la.Token()

		upgraded := make(chan error, 1)
		go func() { upgraded <- la.Upgrade(ctx) }()
		require.Eventually(t, func() bool {
			return b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters WHERE upgrade_token IS NOT NULL`) == 1
		}, 10*time.Second, 5*time.Millisecond)
		require.ErrorIs(t, lc.Upgrade(ctx), ErrUpgradeConflict)
		require.Equal(t, Shared, lc.Mode(), "the refused upgrader keeps its shared lock")
		require.NoError(t, lc.Release(ctx))
		require.NoError(t, <-upgraded)
		require.Equal(t, Exclusive, la.Mode())
		require.Greater(t, la.Token(), before)
		_, err = c.TryLock(ctx, "stack/7", Shared)
		require.ErrorIs(t, err, ErrLocked)

		require.NoError(t, la.Downgrade(ctx))
		require.Equal(t, Shared, la.Mode())
		ls, err := c.TryLock(ctx, "stack/7", Shared)
		require.NoError(t, err, "after a downgrade shared requests are granted")
		require.NoError(t, ls.Release(ctx))
		require.NoError(t, la.Release(ctx))
		require.ErrorIs(t, la.Upgrade(ctx), ErrReleased)
	})
}

// Invariant 9: a waiting exclusive request is not starved by a stream of
// shared requests.
func TestExclusiveNotStarved(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		readers, writer := b.client(t, Config{}), b.client(t, Config{})
		first, err := readers.Lock(ctx, "n", Shared)
		require.NoError(t, err)
		got := make(chan *Lock, 1)
		go func() {
			l, err := writer.Lock(ctx, "n", Exclusive)
			if err == nil {
				got <- l
			}
		}()
		require.Eventually(t, func() bool { return b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`) == 1 },
			10*time.Second, 5*time.Millisecond)
		for range 10 { // new readers are kept out while the writer waits
			_, err := readers.TryLock(ctx, "n", Shared)
			require.ErrorIs(t, err, ErrLocked)
		}
		require.NoError(t, first.Release(ctx))
		select {
		case l := <-got:
			require.Equal(t, Exclusive, l.Mode())
		case <-time.After(10 * time.Second):
			t.Fatal("the writer was not granted after the last reader left")
		}
	})
}

// Close releases everything at once, ends blocked calls, and makes every
// method return ErrClosed.
func TestCloseFreesAtOnce(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, c := b.client(t, Config{TTL: time.Minute}), b.client(t, Config{})
		la, err := a.Lock(ctx, "x", Exclusive)
		require.NoError(t, err)
		lb, err := a.Lock(ctx, "y", Shared)
		require.NoError(t, err)
		_, err = c.Lock(ctx, "held-elsewhere", Exclusive)
		require.NoError(t, err)
		blocked := make(chan error, 1)
		go func() { _, err := a.Lock(ctx, "held-elsewhere", Exclusive); blocked <- err }()
		require.Eventually(t, func() bool { return b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`) == 1 },
			10*time.Second, 5*time.Millisecond)

		require.NoError(t, a.Close())
		require.NoError(t, a.Close(), "idempotent")
		require.ErrorIs(t, <-blocked, ErrClosed)
		for _, l := range []*Lock{la, lb} {
			<-l.Done()
			require.ErrorIs(t, l.Err(), ErrReleased)
		}
		_, err = c.TryLock(ctx, "x", Exclusive)
		require.NoError(t, err, "freed at once, not after the 1 minute TTL")
		_, err = a.TryLock(ctx, "z", Exclusive)
		require.ErrorIs(t, err, ErrClosed)
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`))
	})
}

// Invariant 5: when renewals fail, the holder's Done closes with ErrLost
// before any other client can be granted the lock; invariant 6: the waiter
// takes the expired holder's lock over itself, with the reaper off.
func TestHolderKnowsFirst(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, fa := b.faulty(t, Config{TTL: time.Second, ReapInterval: ReapDisabled})
		c := b.client(t, Config{ReapInterval: ReapDisabled})
		la, err := a.Lock(ctx, "node/1", Exclusive)
		require.NoError(t, err)
		fa.failRenew.Store(true) // the database is unreachable for a's heartbeat

		lc, err := c.Lock(ctx, "node/1", Exclusive)
		require.NoError(t, err)
		select {
		case <-la.Done():
		default:
			t.Fatal("another client was granted the lock before the holder learned it lost it")
		}
		require.ErrorIs(t, la.Err(), ErrLost)
		require.Greater(t, lc.Token(), la.Token())
		require.ErrorIs(t, la.Release(ctx), ErrLost, "release after loss says the lock was lost")
		require.ErrorIs(t, la.Release(ctx), ErrLost, "and says it again")

		// The client opens a fresh lease for later locks once it can renew.
		fa.failRenew.Store(false)
		l2, err := a.Lock(ctx, "node/2", Exclusive)
		require.NoError(t, err)
		require.NoError(t, l2.Err())
	})
}

// Fence refuses a holder whose lease was lost, even if it still has the
// handle, and writes made after it are made under the lock.
func TestFence(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, fa := b.faulty(t, Config{TTL: time.Second, ReapInterval: ReapDisabled})
		la, err := a.Lock(ctx, "vol/9", Exclusive)
		require.NoError(t, err)
		tx, err := b.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, la.Fence(ctx, tx))
		require.NoError(t, tx.Commit())

		fa.failRenew.Store(true)
		<-la.Done()
		tx, err = b.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer tx.Rollback()
		require.ErrorIs(t, la.Fence(ctx, tx), ErrLost)
	})
}

// Invariant 10: one renewal statement per period, however many locks.
func TestHeartbeatIsOnePerClient(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		// 200 locks: a per-lock heartbeat would make 800 statements in the
		// four periods, and taking them stays well inside testCtx's 30 s on
		// SQLite under the whole suite's load (1,000 once took longer).
		const ttl, locks = time.Second, 200
		c, f := b.faulty(t, Config{TTL: ttl})
		for i := range locks {
			_, err := c.Lock(ctx, fmt.Sprintf("n/%d", i), Shared)
			require.NoError(t, err)
		}
		start := f.renewCalls.Load()
		periods := int64(4)
		require.Eventually(t, func() bool { return f.renewCalls.Load()-start >= periods },
			time.Duration(periods+2)*ttl, 10*time.Millisecond)
		// Each renewal is one statement for the whole lease; a per-lock
		// heartbeat would have made thousands.
		require.Less(t, f.renewCalls.Load()-start, periods+3)
	})
}

// Invariant 7: a release that cannot reach the database still returns nil
// and is retried in the background; the lock is then freed even though the
// lease keeps being renewed.
func TestReleaseRetriedInBackground(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, fa := b.faulty(t, Config{TTL: time.Minute})
		c := b.client(t, Config{})
		l, err := a.Lock(ctx, "n", Exclusive)
		require.NoError(t, err)
		fa.failRelease.Store(true)
		require.NoError(t, l.Release(ctx), "Release cannot fail the caller")
		require.ErrorIs(t, l.Err(), ErrReleased)
		_, err = c.TryLock(ctx, "n", Exclusive)
		require.ErrorIs(t, err, ErrLocked, "still held in the database while it is unreachable")
		fa.failRelease.Store(false)
		got, err := c.Lock(ctx, "n", Exclusive)
		require.NoError(t, err, "freed by the background retry long before the 1 minute TTL")
		require.NoError(t, got.Release(ctx))
	})
}

// Do cancels fn's context when the lock is lost and reports ErrLost.
func TestDo(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		c, f := b.faulty(t, Config{TTL: time.Second})
		ran := false
		require.NoError(t, c.Do(ctx, "job", Exclusive, func(ctx context.Context) error {
			ran = true
			return nil
		}))
		require.True(t, ran)
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)), "released after fn")

		boom := errors.New("boom")
		require.ErrorIs(t, c.Do(ctx, "job", Exclusive, func(context.Context) error { return boom }), boom)

		err := c.Do(ctx, "job", Exclusive, func(ctx context.Context) error {
			f.failRenew.Store(true)
			<-ctx.Done() // cancelled when the lease is lost
			return ctx.Err()
		})
		require.ErrorIs(t, err, ErrLost)
		require.ErrorIs(t, err, context.Canceled)
	})
}
