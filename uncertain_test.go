package sqldlm

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Uncertain outcomes: a statement whose answer the client never saw, or
// that ran on in the server after the client gave up. After each, a handle
// whose Err is nil is held in the database in the mode it reports, and
// after Release the name is free of it.

// faultDialect wraps a real dialect for the tests of this file:
//   - lostAnswer: the first call of that operation ("acquire", "upgrade",
//     "downgrade") runs for real, then cancels the caller's context (when
//     cancel is set) and answers a lost connection;
//   - late: the first call of that operation does not run when the client
//     sends it: the client sees a lost connection when its context ends,
//     and the statement runs later, after the request's withdrawal
//     returned and the test closed go (a statement that waited in the
//     server and outlived the client's give-up); its answer goes to lateRes;
//   - abandonErrs: so many first Abandon calls fail;
//   - abandonHang: the first Abandon waits for its context to end;
//   - fenceFalse: the first Fence answers "not held" without running (the
//     false answer of a snapshot older than the grant).
type faultDialect struct {
	dialect.Dialect
	cancel context.CancelFunc

	mu            sync.Mutex
	lostAnswer    string
	late          string
	lateNow       bool // the late statement's caller sees a lost connection at once, not at ctx's end
	lateReq       int64
	abandonErrs   int
	abandonHang   bool
	fenceFalse    bool
	downgradeFail int // the next Downgrade calls fail on the connection without running
	createFail    int // the next CreateLease calls fail on the connection without running
	calls         map[string]int
	keepHold      []bool // KeepHold of every Abandon call

	withdrawn chan struct{} // closed when the late request's withdrawal returned
	wOnce     sync.Once
	goLate    chan struct{}
	lateRes   chan lateResult
}

type lateResult struct {
	res *dialect.AcquireResult
	err error
}

func newFaultDialect(d dialect.Dialect) *faultDialect {
	return &faultDialect{Dialect: d, calls: map[string]int{}, withdrawn: make(chan struct{}),
		goLate: make(chan struct{}), lateRes: make(chan lateResult, 1)}
}

func (d *faultDialect) count(op string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[op]
}

func (d *faultDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	op := "acquire"
	if p.UpgradeToken != 0 {
		op = "upgrade"
	}
	d.mu.Lock()
	d.calls[op]++
	lost := d.lostAnswer == op
	if lost {
		d.lostAnswer = ""
	}
	late := d.late == op
	if late {
		d.late, d.lateReq = "", p.RequestID
	}
	d.mu.Unlock()
	switch {
	case lost:
		if _, err := d.Dialect.Acquire(ctx, db, p); err != nil {
			return nil, err
		}
		if d.cancel != nil {
			d.cancel()
		}
		return nil, errConnLost
	case late:
		go func() {
			<-d.withdrawn
			<-d.goLate
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			res, err := d.Dialect.Acquire(ctx, db, p)
			d.lateRes <- lateResult{res, err}
		}()
		if d.lateNow {
			return nil, errConnLost
		}
		<-ctx.Done()
		return nil, dialect.NewError(dialect.ErrConnection, "", ctx.Err())
	}
	return d.Dialect.Acquire(ctx, db, p)
}

func (d *faultDialect) Abandon(ctx context.Context, db *sql.DB, p *dialect.AbandonParams) (*dialect.AbandonResult, error) {
	d.mu.Lock()
	d.calls["abandon"]++
	d.keepHold = append(d.keepHold, p.KeepHold)
	fail := d.abandonErrs > 0
	if fail {
		d.abandonErrs--
	}
	hang := d.abandonHang
	d.abandonHang = false
	lateReq := d.lateReq
	d.mu.Unlock()
	if hang {
		<-ctx.Done()
		return nil, dialect.NewError(dialect.ErrConnection, "", ctx.Err())
	}
	if fail {
		return nil, errConnLost
	}
	res, err := d.Dialect.Abandon(ctx, db, p)
	if err == nil && p.RequestID == lateReq {
		d.wOnce.Do(func() { close(d.withdrawn) })
	}
	return res, err
}

func (d *faultDialect) CreateLease(ctx context.Context, db *sql.DB, p *dialect.CreateLeaseParams) error {
	d.mu.Lock()
	fail := d.createFail > 0
	if fail {
		d.createFail--
	}
	d.mu.Unlock()
	if fail {
		return errConnLost
	}
	return d.Dialect.CreateLease(ctx, db, p)
}

// Lock waits through a database that cannot create its lease for a while
// (it failed to accept connections in time under load); TryLock reports it.
// (Before: Lock returned the first failure.)
func TestLockRetriesLeaseCreation(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
		d.set(func(d *faultDialect) { d.createFail = 1 })
		_, err := c.TryLock(ctx, "lease/retry", Exclusive)
		require.ErrorIs(t, err, dialect.ErrConnection, "TryLock fails at once")
		d.set(func(d *faultDialect) { d.createFail = 3 })
		l, err := c.Lock(ctx, "lease/retry", Exclusive)
		require.NoError(t, err, "Lock waits for a lease")
		requireHeldAsReported(t, b, l)
		require.NoError(t, l.Release(ctx))
	})
}

func (d *faultDialect) Downgrade(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	d.mu.Lock()
	d.calls["downgrade"]++
	lost := d.lostAnswer == "downgrade"
	if lost {
		d.lostAnswer = ""
	}
	fail := !lost && d.downgradeFail > 0
	if fail {
		d.downgradeFail--
	}
	d.mu.Unlock()
	if fail {
		return false, errConnLost
	}
	ok, err := d.Dialect.Downgrade(ctx, db, p)
	if !lost || err != nil {
		return ok, err
	}
	if d.cancel != nil {
		d.cancel()
	}
	return false, errConnLost
}

func (d *faultDialect) Fence(ctx context.Context, db *sql.DB, tx *sql.Tx, p *dialect.HoldRef, idle time.Duration) (bool, error) {
	d.mu.Lock()
	f := d.fenceFalse
	d.fenceFalse = false
	d.mu.Unlock()
	if f {
		return false, nil
	}
	return d.Dialect.Fence(ctx, db, tx, p, idle)
}

func (d *faultDialect) set(f func(d *faultDialect)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
}

// holds returns the tokens and modes of the holds of name.
func (b *lockBundle) holds(t *testing.T, name string) map[int64]string {
	t.Helper()
	rows, err := b.db.QueryContext(context.Background(), fmt.Sprintf(`SELECT token, mode FROM %s WHERE name = '%s'`, testdb.Holds(b.kind), name))
	require.NoError(t, err)
	defer rows.Close()
	out := map[int64]string{}
	for rows.Next() {
		var tok int64
		var mode string
		require.NoError(t, rows.Scan(&tok, &mode))
		out[tok] = mode
	}
	require.NoError(t, rows.Err())
	return out
}

// requireHeldAsReported checks that l, whose Err is nil, is held in the
// database with its token and in its mode, and that another client is kept
// out accordingly.
func requireHeldAsReported(t *testing.T, b *lockBundle, l *Lock) {
	t.Helper()
	require.NoError(t, l.Err())
	mode := map[Mode]string{Shared: "S", Exclusive: "X"}[l.Mode()]
	require.Equal(t, mode, b.holds(t, l.Name())[l.Token()], "the handle's hold (token %d, %v) in the database", l.Token(), l.Mode())
	ctx := testCtx(t)
	other := b.client(t, Config{ReapInterval: ReapDisabled})
	_, err := other.TryLock(ctx, l.Name(), Exclusive)
	require.ErrorIs(t, err, ErrLocked, "another client is kept out")
	if l.Mode() == Exclusive {
		_, err = other.TryLock(ctx, l.Name(), Shared)
		require.ErrorIs(t, err, ErrLocked, "another client is kept out of shared too")
	}
}

// requireFree checks that another client can take name exclusively.
func requireFree(t *testing.T, b *lockBundle, name string) {
	t.Helper()
	ctx := testCtx(t)
	o, err := b.client(t, Config{ReapInterval: ReapDisabled}).TryLock(ctx, name, Exclusive)
	require.NoError(t, err, "the name is free")
	require.NoError(t, o.Release(ctx))
}

// Defect 1, answer lost: the upgrade commits in the database, its answer is
// lost and ctx ends. The withdrawal keeps the exclusive hold (it replaced
// the handle's shared one) and the handle adopts it: Upgrade returns nil.
// (Before: the withdrawal deleted the exclusive hold, the handle stayed
// "shared" with Err nil, and another client was granted Exclusive.)
func TestUpgradeAnswerLostKeepsGrant(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "up/lost", Shared)
		require.NoError(t, err)
		shared := l.Token()
		uctx, cancel := context.WithCancel(ctx)
		defer cancel()
		d.set(func(d *faultDialect) { d.lostAnswer, d.cancel = "upgrade", cancel })
		require.NoError(t, l.Upgrade(uctx), "the upgrade was granted as ctx ended")
		require.Equal(t, Exclusive, l.Mode())
		require.Greater(t, l.Token(), shared)
		require.Equal(t, map[int64]string{l.Token(): "X"}, b.holds(t, "up/lost"))
		requireHeldAsReported(t, b, l)
		require.NoError(t, l.Release(ctx))
		requireFree(t, b, "up/lost")
	})
}

// Defect 1, withdrawal failed: the upgrade's outcome stays unknown. The
// handle ends with ErrLost before Upgrade returns, and the janitor then
// withdraws the request and releases the shared hold: the name is freed
// while the lease lives.
func TestUpgradeUnknownWithdrawalFailsLosesLock(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, TTL: time.Minute, ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "up/unknown", Shared)
		require.NoError(t, err)
		uctx, cancel := context.WithCancel(ctx)
		defer cancel()
		d.set(func(d *faultDialect) { d.lostAnswer, d.cancel, d.abandonErrs = "upgrade", cancel, 1 })
		err = l.Upgrade(uctx)
		require.ErrorIs(t, err, ErrLost)
		require.ErrorIs(t, err, context.Canceled)
		select {
		case <-l.Done():
		default:
			t.Fatal("Upgrade returned before the handle was ended")
		}
		require.ErrorIs(t, l.Err(), ErrLost)
		require.Eventually(t, func() bool { return len(b.holds(t, "up/unknown")) == 0 }, 10*time.Second, 10*time.Millisecond,
			"the janitor deleted the upgrade's hold (the lease lives on for a minute)")
		requireFree(t, b, "up/unknown")
		require.ErrorIs(t, l.Release(ctx), ErrLost)
	})
}

// Defect 1, certain outcome: an upgrade that waits behind another shared
// holder and gives up (ctx ended) is withdrawn keeping its hold: the lock
// stays shared, its hold untouched, and the other holder's release grants
// nothing to the withdrawn upgrade.
func TestUpgradeGivenUpStaysShared(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
		other := b.client(t, Config{ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "up/given-up", Shared)
		require.NoError(t, err)
		lo, err := other.Lock(ctx, "up/given-up", Shared)
		require.NoError(t, err)
		uctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		require.ErrorIs(t, l.Upgrade(uctx), context.DeadlineExceeded)
		require.Equal(t, Shared, l.Mode())
		d.mu.Lock()
		require.Equal(t, []bool{true}, d.keepHold, "one withdrawal, keeping the hold")
		d.mu.Unlock()
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`))
		require.NoError(t, lo.Release(ctx))
		require.Equal(t, map[int64]string{l.Token(): "S"}, b.holds(t, "up/given-up"))
		requireHeldAsReported(t, b, l)
		require.NoError(t, l.Upgrade(ctx), "and it can upgrade later")
		requireHeldAsReported(t, b, l)
		require.NoError(t, l.Release(ctx))
		requireFree(t, b, "up/given-up")
	})
}

// Defects 1 and 2, statement outlives the give-up: a waiting upgrade's
// statement reaches the server only after the caller's ctx ended and the
// request was withdrawn, and after the other shared holder left. It is
// refused (Withdrawn): the handle's shared hold is untouched and still the
// only hold, and nothing is granted behind the handle's back.
func TestUpgradeLateStatementAfterWithdrawal(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, TTL: time.Minute, ReapInterval: ReapDisabled})
		other := b.client(t, Config{ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "up/late", Shared)
		require.NoError(t, err)
		lo, err := other.Lock(ctx, "up/late", Shared)
		require.NoError(t, err)
		d.set(func(d *faultDialect) { d.late = "upgrade" })
		uctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		require.ErrorIs(t, l.Upgrade(uctx), context.DeadlineExceeded)
		require.Equal(t, Shared, l.Mode(), "the lock stays shared")
		require.NoError(t, l.Err())
		select {
		case <-d.withdrawn:
		case <-time.After(10 * time.Second):
			t.Fatal("the upgrade was not withdrawn")
		}
		require.NoError(t, lo.Release(ctx))
		close(d.goLate)
		late := <-d.lateRes
		require.NoError(t, late.err)
		require.Equal(t, dialect.Withdrawn, late.res.Status, "the late statement of the withdrawn upgrade")
		require.Equal(t, map[int64]string{l.Token(): "S"}, b.holds(t, "up/late"), "only the handle's shared hold")
		requireHeldAsReported(t, b, l)
		require.NoError(t, l.Release(ctx))
		requireFree(t, b, "up/late")
	})
}

// Defect 2: a waiter's statement that outlives the give-up and the
// withdrawal (a cancel request lost, a statement waiting on the name's
// row) is refused when it runs, after the holder left: no ghost hold or
// waiter row on the live lease. The withdrawal is made once (it is final:
// no re-withdrawals after a second and a TTL).
func TestLateStatementAfterWithdrawalGrantsNothing(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		holder := b.client(t, Config{ReapInterval: ReapDisabled})
		h, err := holder.Lock(ctx, "late/n", Exclusive)
		require.NoError(t, err)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, TTL: time.Second, ReapInterval: ReapDisabled})
		// The lease first, so that the 100ms below are the acquire's alone
		// (under the suite's load creating a lease can take longer, and the
		// Lock then ended before its statement was sent).
		warm, err := c.Lock(ctx, "late/warm", Exclusive)
		require.NoError(t, err)
		require.NoError(t, warm.Release(ctx))
		d.set(func(d *faultDialect) { d.late = "acquire" })
		wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		_, err = c.Lock(wctx, "late/n", Exclusive)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		select {
		case <-d.withdrawn:
		case <-time.After(10 * time.Second):
			t.Fatal("the request was not withdrawn")
		}
		require.NoError(t, h.Release(ctx))
		close(d.goLate)
		late := <-d.lateRes
		require.NoError(t, late.err)
		require.Equal(t, dialect.Withdrawn, late.res.Status, "the late statement of the withdrawn request")
		require.Empty(t, b.holds(t, "late/n"))
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`))
		requireFree(t, b, "late/n")
		// No delayed re-withdrawals: after a TTL and a half, still one.
		time.Sleep(1500 * time.Millisecond) // observing that nothing happens
		require.Equal(t, 1, d.count("abandon"))
	})
}

// TryLock's first statement loses its connection but still runs later in
// the server; its retry finds the name held and TryLock reports it locked.
// The lost statement must not grant afterwards: TryLock withdraws the
// request before it returns. (Before: the late statement could grant a
// hold nobody knew of, on the live, renewed lease.)
func TestTryLockWithdrawsLostAttempt(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		holder := b.client(t, Config{ReapInterval: ReapDisabled})
		h, err := holder.Lock(ctx, "late/try", Exclusive)
		require.NoError(t, err)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
		d.set(func(d *faultDialect) { d.late, d.lateNow = "acquire", true })
		_, err = c.TryLock(ctx, "late/try", Exclusive)
		require.ErrorIs(t, err, ErrLocked)
		select {
		case <-d.withdrawn:
		case <-time.After(10 * time.Second):
			t.Fatal("the attempt whose answer was lost was not withdrawn")
		}
		require.NoError(t, h.Release(ctx))
		close(d.goLate)
		late := <-d.lateRes
		require.NoError(t, late.err)
		require.Equal(t, dialect.Withdrawn, late.res.Status, "the late statement of the withdrawn TryLock")
		require.Empty(t, b.holds(t, "late/try"))
		requireFree(t, b, "late/try")
	})
}

// Defect 12 (Lock returning long after ctx ended): the withdrawal after ctx
// ended waits only briefly for a database that does not answer; the
// janitor then withdraws the request.
func TestLockReturnsPromptlyWhenWithdrawalHangs(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		holder := b.client(t, Config{ReapInterval: ReapDisabled})
		h, err := holder.Lock(ctx, "prompt/n", Exclusive)
		require.NoError(t, err)
		d := newFaultDialect(b.db.Dialect)
		const ttl = 10 * time.Second
		c := b.client(t, Config{Dialect: d, TTL: ttl, ReapInterval: ReapDisabled})
		d.set(func(d *faultDialect) { d.abandonHang = true })
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		_, err = c.Lock(wctx, "prompt/n", Exclusive)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		deadline, _ := wctx.Deadline()
		late := time.Since(deadline)
		require.Less(t, late, time.Second, "Lock returned %s after ctx ended (a withdrawal bounded by min(TTL/2, 5s) would take 5s)", late)
		require.Eventually(t, func() bool { return b.count(t, `SELECT COUNT(*) FROM sqldlm_waiters`) == 0 },
			10*time.Second, 10*time.Millisecond, "the janitor withdrew the request")
		require.GreaterOrEqual(t, d.count("abandon"), 2)
		require.NoError(t, h.Release(ctx))
	})
}

// Defect 3: Release of a handle marked lost while its lease still lives (a
// false "not held", as a stale snapshot answered) deletes its hold, and
// still returns ErrLost. (Before: the hold stayed for the client's life.)
func TestReleaseOfLostHandleDeletesHold(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, TTL: time.Minute, ReapInterval: ReapDisabled})
		l, err := c.Lock(ctx, "lost/n", Exclusive)
		require.NoError(t, err)
		d.set(func(d *faultDialect) { d.fenceFalse = true })
		tx, err := b.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.ErrorIs(t, l.Fence(ctx, tx), ErrLost)
		require.NoError(t, tx.Rollback())
		require.ErrorIs(t, l.Err(), ErrLost)
		require.ErrorIs(t, l.Release(ctx), ErrLost, "Release still reports the loss")
		require.Empty(t, b.holds(t, "lost/n"), "the hold did not outlive Release")
		requireFree(t, b, "lost/n")
	})
}

// blockedUnknownDialect answers every blocked acquire with an unknown
// holder expiry (ExpiresIn 0, as PostgreSQL's pinned dead holder does),
// with waiters ahead, and counts acquire statements.
type blockedUnknownDialect struct {
	dialect.Dialect
	acquires atomic.Int64
}

func (d *blockedUnknownDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	d.acquires.Add(1)
	res, err := d.Dialect.Acquire(ctx, db, p)
	if err == nil && res.Status == dialect.Blocked {
		blocker := *res.Blocker
		blocker.ExpiresIn, blocker.WaitersAhead = 0, 4
		res = &dialect.AcquireResult{Status: dialect.Blocked, Blocker: &blocker}
	}
	return res, err
}

// Defect 8: a blocker whose expiry is unknown (ExpiresIn <= 0) does not
// make the waiter poll every millisecond; the usual backoff applies.
func TestUnknownExpiryUsesBackoff(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		holder := b.client(t, Config{ReapInterval: ReapDisabled})
		h, err := holder.Lock(ctx, "pinned/n", Exclusive)
		require.NoError(t, err)
		d := &blockedUnknownDialect{Dialect: b.db.Dialect}
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err = c.Lock(wctx, "pinned/n", Exclusive)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		n := d.acquires.Load()
		t.Logf("%d acquire statements in 1s", n)
		// The backoff doubles from 2 ms to the cap of a waiter with 4
		// ahead (64 ms): about 20 in a second. A 1 ms expiry wake-up made
		// hundreds.
		require.Less(t, n, int64(45))
		require.NoError(t, h.Release(ctx))
	})
}

// Defect 10: a downgrade whose answer was lost is retried (it is
// idempotent) and succeeds; one whose outcome stays unknown (ctx ended)
// leaves the handle shared, the safe side, and says so.
func TestDowngradeUnknownOutcome(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := newFaultDialect(b.db.Dialect)
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})

		l, err := c.Lock(ctx, "down/retry", Exclusive)
		require.NoError(t, err)
		d.set(func(d *faultDialect) { d.lostAnswer = "downgrade" })
		require.NoError(t, l.Downgrade(ctx), "the retry settles it")
		require.Equal(t, 2, d.count("downgrade"))
		requireHeldAsReported(t, b, l)
		require.NoError(t, l.Release(ctx))

		// The answer is lost and ctx ends with it: the downgrade is sent
		// again under a context of its own, and the handle follows the
		// database.
		l, err = c.Lock(ctx, "down/unknown", Exclusive)
		require.NoError(t, err)
		dctx, cancel := context.WithCancel(ctx)
		defer cancel()
		d.set(func(d *faultDialect) { d.lostAnswer, d.cancel = "downgrade", cancel })
		require.NoError(t, l.Downgrade(dctx), "settled after ctx ended")
		require.Equal(t, Shared, l.Mode())
		requireHeldAsReported(t, b, l)
		require.NoError(t, l.Release(ctx))
		requireFree(t, b, "down/unknown")

		// The database cannot be reached to settle it: the lock is given
		// up, never left exclusive over a shared hold or the reverse, and
		// its hold is released in the background.
		l, err = c.Lock(ctx, "down/lost", Exclusive)
		require.NoError(t, err)
		dctx, cancel = context.WithCancel(ctx)
		defer cancel()
		d.set(func(d *faultDialect) { d.lostAnswer, d.cancel, d.downgradeFail = "downgrade", cancel, 100 })
		err = l.Downgrade(dctx)
		require.ErrorIs(t, err, ErrLost)
		require.ErrorIs(t, l.Err(), ErrLost)
		d.set(func(d *faultDialect) { d.downgradeFail = 0 })
		require.Eventually(t, func() bool { return len(b.holds(t, "down/lost")) == 0 }, 10*time.Second, 10*time.Millisecond,
			"the given-up lock's hold is released in the background")
		requireFree(t, b, "down/lost")
	})
}
