package dialecttest

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// lockerBundle is one test's database and a few leases on it.
type lockerBundle struct {
	t      *testing.T
	ctx    context.Context
	d      dialect.Testable
	db     *sql.DB
	reopen func(testing.TB) *sql.DB
	holds  string // Harness.Holds
}

func setupLocker(t *testing.T, h Harness) *lockerBundle {
	t.Helper()
	db, reopen := migrated(t, h)
	require.NoError(t, h.Dialect.CreateLease(ctxFor(t), db, &dialect.CreateLeaseParams{ID: rand.Int64(), Owner: "probe", TTL: time.Second}))
	return &lockerBundle{t: t, ctx: ctxFor(t), d: h.Dialect.(dialect.Testable), db: db, reopen: reopen, holds: h.holds()}
}

// lease creates a lease of owner with ttl and returns its id.
func (b *lockerBundle) lease(owner string, ttl time.Duration) int64 {
	b.t.Helper()
	id := rand.Int64()
	require.NoError(b.t, b.d.CreateLease(b.ctx, b.db, &dialect.CreateLeaseParams{ID: id, Owner: owner, TTL: ttl}))
	return id
}

func (b *lockerBundle) acquire(p dialect.AcquireParams) *dialect.AcquireResult {
	b.t.Helper()
	if p.RequestID == 0 {
		p.RequestID = rand.Int64()
	}
	res, err := b.d.Acquire(b.ctx, b.db, &p)
	require.NoError(b.t, err)
	return res
}

func (b *lockerBundle) grant(name string, leaseID int64, mode dialect.Mode) int64 {
	b.t.Helper()
	res := b.acquire(dialect.AcquireParams{Name: name, LeaseID: leaseID, Mode: mode})
	require.Equal(b.t, dialect.Granted, res.Status, "grant %s %c to lease %d: %+v", name, mode, leaseID, res.Blocker)
	require.Positive(b.t, res.Token)
	return res.Token
}

func (b *lockerBundle) blocked(p dialect.AcquireParams) *dialect.Blocker {
	b.t.Helper()
	res := b.acquire(p)
	require.Equal(b.t, dialect.Blocked, res.Status, "%s %c for lease %d should be blocked", p.Name, p.Mode, p.LeaseID)
	require.NotNil(b.t, res.Blocker)
	return res.Blocker
}

func (b *lockerBundle) release(name string, leaseID, token int64) bool {
	b.t.Helper()
	ok, err := b.d.Release(b.ctx, b.db, &dialect.HoldRef{Name: name, LeaseID: leaseID, Token: token})
	require.NoError(b.t, err)
	return ok
}

// expire waits, by the server's clock, until a lease created with ttl at or
// before now has expired.
func (b *lockerBundle) expire(ttl time.Duration) {
	b.t.Helper()
	start, err := b.d.Now(b.ctx, b.db)
	require.NoError(b.t, err)
	require.Eventually(b.t, func() bool {
		now, err := b.d.Now(b.ctx, b.db)
		return err == nil && now.Sub(start) > ttl
	}, 10*time.Second, 5*time.Millisecond)
}

func (b *lockerBundle) count(query string, args ...any) int {
	b.t.Helper()
	var n int
	require.NoError(b.t, b.db.QueryRowContext(b.ctx, query, args...).Scan(&n))
	return n
}

// short is the TTL of leases a test lets expire. Tests create such a lease
// right before its first use and do little before its last, so that a slow
// run (-race, a loaded machine) does not see it expire early.
const short = 400 * time.Millisecond

func exerciseLocker(t *testing.T, h Harness) {
	tests := map[string]func(t *testing.T, b *lockerBundle){
		"LeaseRenewalAndExpiry":           testLeaseRenewalAndExpiry,
		"ExclusiveConflicts":              testExclusiveConflicts,
		"SharedHoldersAreCompatible":      testSharedCompatible,
		"HandlesOfOneLeaseConflict":       testOneLeaseConflicts,
		"TokensStrictlyIncrease":          testTokensIncrease,
		"RepeatedRequestIsIdempotent":     testIdempotentRequest,
		"TakeoverOfExpiredHolder":         testTakeover,
		"RenewedHolderIsNotTakenOver":     testRenewedNotTakenOver,
		"RequestOfDeadLeaseIsRefused":     testLeaseLost,
		"WaitersAreServedInArrivalOrder":  testFIFO,
		"WaitingExclusiveKeepsSharedOut":  testWriterPreference,
		"DeadWaitersDoNotBlock":           testDeadWaiters,
		"Upgrade":                         testUpgrade,
		"UpgradeGoesBeforeWaiters":        testUpgradePrecedence,
		"Abandon":                         testAbandon,
		"Downgrade":                       testDowngrade,
		"Fence":                           testFence,
		"FencePinsTheHold":                testFencePins,
		"DeleteLease":                     testDeleteLease,
		"ReleaseInCallersTransaction":     testReleaseTx,
		"Payload":                         testPayload,
		"LockDelay":                       testLockDelay,
		"Reap":                            testReap,
		"NamesCompareByteWise":            testByteWiseNames,
		"ConcurrentGrantsExclude":         testConcurrentGrants,
		"RenewalAndTakeoverSerialize":     testRenewTakeoverRace,
		"RenewalInFlightWinsOverTakeover": testRenewalInFlightWinsOverTakeover,
	}
	runSorted(t, h, tests)
}

// runSorted runs each test, in name order, in parallel, each on its own
// fresh database.
func runSorted(t *testing.T, h Harness, tests map[string]func(t *testing.T, b *lockerBundle)) {
	names := make([]string, 0, len(tests))
	for name := range tests {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			h.skipListed(t)
			t.Parallel()
			tests[name](t, setupLocker(t, h))
		})
	}
}

func testLeaseRenewalAndExpiry(t *testing.T, b *lockerBundle) {
	id := b.lease("a", short)
	ok, err := b.d.RenewLease(b.ctx, b.db, id)
	require.NoError(t, err)
	require.True(t, ok, "a live lease renews")
	b.expire(short)
	for range 2 {
		ok, err = b.d.RenewLease(b.ctx, b.db, id)
		require.NoError(t, err)
		require.False(t, ok, "an expired lease stays expired")
	}
	ok, err = b.d.RenewLease(b.ctx, b.db, rand.Int64())
	require.NoError(t, err)
	require.False(t, ok, "an unknown lease does not renew")
}

func testExclusiveConflicts(t *testing.T, b *lockerBundle) {
	a, c := b.lease("owner-a", time.Minute), b.lease("owner-c", time.Minute)
	tok := b.grant("n", a, dialect.Exclusive)
	for _, mode := range []dialect.Mode{dialect.Exclusive, dialect.Shared} {
		bl := b.blocked(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: mode})
		require.Equal(t, "owner-a", bl.Owner)
		require.Equal(t, dialect.Exclusive, bl.Mode)
		require.Greater(t, bl.ExpiresIn, 50*time.Second)
		require.LessOrEqual(t, bl.ExpiresIn, time.Minute)
	}
	require.True(t, b.release("n", a, tok))
	require.False(t, b.release("n", a, tok), "a second release finds nothing")
	tok2 := b.grant("n", c, dialect.Exclusive)
	require.Greater(t, tok2, tok)
}

func testSharedCompatible(t *testing.T, b *lockerBundle) {
	a, c, x := b.lease("a", time.Minute), b.lease("c", time.Minute), b.lease("x", time.Minute)
	ta := b.grant("n", a, dialect.Shared)
	tc := b.grant("n", c, dialect.Shared)
	require.Greater(t, tc, ta)
	bl := b.blocked(dialect.AcquireParams{Name: "n", LeaseID: x, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Shared, bl.Mode)
	require.True(t, b.release("n", a, ta))
	b.blocked(dialect.AcquireParams{Name: "n", LeaseID: x, Mode: dialect.Exclusive})
	require.True(t, b.release("n", c, tc))
	b.grant("n", x, dialect.Exclusive)
}

func testOneLeaseConflicts(t *testing.T, b *lockerBundle) {
	a := b.lease("a", time.Minute)
	b.grant("n", a, dialect.Exclusive)
	b.blocked(dialect.AcquireParams{Name: "n", LeaseID: a, Mode: dialect.Exclusive})
	b.grant("s", a, dialect.Shared)
	b.grant("s", a, dialect.Shared) // two shared holds of one lease
}

func testTokensIncrease(t *testing.T, b *lockerBundle) {
	a := b.lease("a", time.Minute)
	last := map[string]int64{}
	for i := range 12 {
		name := []string{"x", "y", "z"}[i%3]
		mode := []dialect.Mode{dialect.Exclusive, dialect.Shared}[i%2]
		tok := b.grant(name, a, mode)
		require.Greater(t, tok, last[name])
		last[name] = tok
		require.True(t, b.release(name, a, tok))
		if i%4 == 3 { // garbage-collect the idle rows: tokens must not go back
			b.expire(2 * time.Millisecond) // rows idle "for longer than 0": let the server clock move on
			_, err := b.d.Reap(b.ctx, b.db, 100, 0)
			require.NoError(t, err)
			require.Zero(t, b.count(`SELECT COUNT(*) FROM sqldlm_locks`))
		}
	}
}

func testIdempotentRequest(t *testing.T, b *lockerBundle) {
	a := b.lease("a", time.Minute)
	p := dialect.AcquireParams{Name: "n", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive}
	first := b.acquire(p)
	again := b.acquire(p)
	require.Equal(t, dialect.Granted, again.Status)
	require.Equal(t, first.Token, again.Token)
	require.Equal(t, 1, b.count(`SELECT COUNT(*) FROM `+b.holds))
}

func testTakeover(t *testing.T, b *lockerBundle) {
	dead, c := b.lease("dead", short), b.lease("c", time.Minute)
	tok := b.grant("n", dead, dialect.Exclusive)
	b.expire(short)
	res := b.acquire(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, res.Status)
	tok2 := res.Token
	require.Greater(t, tok2, tok)
	require.Len(t, res.TookOver, 1, "the grant reports the hold it took over")
	taken := res.TookOver[0]
	require.Equal(t, "dead", taken.Owner)
	require.Equal(t, dead, taken.LeaseID)
	require.Equal(t, tok, taken.Token)
	require.Equal(t, dialect.Exclusive, taken.Mode)
	require.False(t, taken.Broken, "it had expired, not been broken")
	require.WithinDuration(t, time.Now(), taken.ExpiredAt, time.Minute)
	now, err := b.d.Now(b.ctx, b.db)
	require.NoError(t, err)
	require.False(t, taken.ExpiredAt.After(now), "it expired before the takeover")
	require.True(t, b.release("n", c, tok2))
	clean := b.acquire(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, clean.Status)
	require.Empty(t, clean.TookOver, "a cleanly released name is not a takeover")
	ok, err := b.d.RenewLease(b.ctx, b.db, dead)
	require.NoError(t, err)
	require.False(t, ok, "the dead lease cannot be renewed after the takeover")
	require.False(t, b.release("n", dead, tok), "the dead holder's hold is gone")
	require.Equal(t, 1, b.count(`SELECT COUNT(*) FROM sqldlm_leases WHERE broken_at IS NOT NULL`), "the takeover marked the lease broken")
}

func testRenewedNotTakenOver(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", 2*short), b.lease("c", time.Minute)
	b.grant("n", a, dialect.Exclusive)
	deadline := time.Now().Add(4 * short)
	for time.Now().Before(deadline) { // keep renewing past the first expiry
		ok, err := b.d.RenewLease(b.ctx, b.db, a)
		require.NoError(t, err)
		require.True(t, ok)
		b.blocked(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive})
		time.Sleep(short / 5) // pacing of the renewals, not synchronisation
	}
}

func testLeaseLost(t *testing.T, b *lockerBundle) {
	a := b.lease("a", short)
	b.expire(short)
	res := b.acquire(dialect.AcquireParams{Name: "n", LeaseID: a, Mode: dialect.Exclusive})
	require.Equal(t, dialect.LeaseLost, res.Status)
	res = b.acquire(dialect.AcquireParams{Name: "n", LeaseID: rand.Int64(), Mode: dialect.Exclusive})
	require.Equal(t, dialect.LeaseLost, res.Status)
	require.Zero(t, b.count(`SELECT COUNT(*) FROM `+b.holds))
}

func testFIFO(t *testing.T, b *lockerBundle) {
	h, w1, w2 := b.lease("h", time.Minute), b.lease("w1", time.Minute), b.lease("w2", time.Minute)
	tok := b.grant("n", h, dialect.Exclusive)
	p1 := dialect.AcquireParams{Name: "n", LeaseID: w1, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
	p2 := dialect.AcquireParams{Name: "n", LeaseID: w2, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
	b.blocked(p1)
	bl := b.blocked(p2)
	require.Equal(t, 1, bl.WaitersAhead)
	require.Equal(t, 2, b.count(`SELECT COUNT(*) FROM sqldlm_waiters`))
	require.True(t, b.release("n", h, tok))
	bl = b.blocked(p2)
	require.Empty(t, bl.Owner, "only the earlier waiter is in the way")
	require.Equal(t, 1, bl.WaitersAhead)
	require.Equal(t, dialect.Granted, b.acquire(p1).Status)
	require.Equal(t, 1, b.count(`SELECT COUNT(*) FROM sqldlm_waiters`), "the granted waiter's row is gone")
}

func testWriterPreference(t *testing.T, b *lockerBundle) {
	s1, w, s2 := b.lease("s1", time.Minute), b.lease("w", time.Minute), b.lease("s2", time.Minute)
	tok := b.grant("n", s1, dialect.Shared)
	pw := dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
	b.blocked(pw)
	bl := b.blocked(dialect.AcquireParams{Name: "n", LeaseID: s2, Mode: dialect.Shared})
	require.Equal(t, 1, bl.WaitersAhead, "a waiting exclusive request keeps new shared requests out")
	require.True(t, b.release("n", s1, tok))
	require.Equal(t, dialect.Granted, b.acquire(pw).Status)

	// Shared waiters queued together behind nothing conflicting go together.
	pa := dialect.AcquireParams{Name: "m", LeaseID: s1, RequestID: rand.Int64(), Mode: dialect.Shared, Enqueue: true}
	pb := dialect.AcquireParams{Name: "m", LeaseID: s2, RequestID: rand.Int64(), Mode: dialect.Shared, Enqueue: true}
	tx := b.grant("m", w, dialect.Exclusive)
	b.blocked(pa)
	b.blocked(pb)
	require.True(t, b.release("m", w, tx))
	require.Equal(t, dialect.Granted, b.acquire(pb).Status, "a shared waiter is not held back by an earlier shared waiter")
	require.Equal(t, dialect.Granted, b.acquire(pa).Status)
}

func testDeadWaiters(t *testing.T, b *lockerBundle) {
	h, c := b.lease("h", time.Minute), b.lease("c", time.Minute)
	tok := b.grant("n", h, dialect.Exclusive)
	dead := b.lease("dead", short)
	b.blocked(dialect.AcquireParams{Name: "n", LeaseID: dead, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true})
	b.expire(short)
	require.True(t, b.release("n", h, tok))
	b.grant("n", c, dialect.Exclusive)
}

func testUpgrade(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
	ta := b.grant("n", a, dialect.Shared)
	tc := b.grant("n", c, dialect.Shared)
	ua := dialect.AcquireParams{Name: "n", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: ta}
	b.blocked(ua)
	uc := b.acquire(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: tc})
	require.Equal(t, dialect.UpgradeConflict, uc.Status, "the second upgrader fails at once")
	require.True(t, b.release("n", c, tc))
	res := b.acquire(ua)
	require.Equal(t, dialect.Granted, res.Status)
	require.Greater(t, res.Token, tc, "an upgrade gets a new token")
	require.False(t, b.release("n", a, ta), "the shared hold was replaced")
	require.Equal(t, 1, b.count(`SELECT COUNT(*) FROM `+b.holds+` WHERE mode = 'X'`))
	require.Zero(t, b.count(`SELECT COUNT(*) FROM sqldlm_waiters`))

	gone := b.acquire(dialect.AcquireParams{Name: "n", LeaseID: a, Mode: dialect.Exclusive, UpgradeToken: ta})
	require.Equal(t, dialect.NotHeld, gone.Status, "upgrading a hold that is gone")
}

func testUpgradePrecedence(t *testing.T, b *lockerBundle) {
	a, w := b.lease("a", time.Minute), b.lease("w", time.Minute)
	ta := b.grant("n", a, dialect.Shared)
	b.blocked(dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true})
	res := b.acquire(dialect.AcquireParams{Name: "n", LeaseID: a, Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: ta})
	require.Equal(t, dialect.Granted, res.Status, "the sole holder's upgrade goes before an earlier exclusive waiter")
}

func testAbandon(t *testing.T, b *lockerBundle) {
	h, w := b.lease("h", time.Minute), b.lease("w", time.Minute)
	b.grant("n", h, dialect.Exclusive)
	p := dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
	b.blocked(p)
	res, err := b.d.Abandon(b.ctx, b.db, &dialect.AbandonParams{Name: p.Name, LeaseID: w, RequestID: p.RequestID})
	require.NoError(t, err)
	require.Empty(t, res.Freed)
	require.Zero(t, b.count(`SELECT COUNT(*) FROM sqldlm_waiters`))

	// A grant whose answer was never seen is withdrawn too.
	q := dialect.AcquireParams{Name: "m", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive}
	require.Equal(t, dialect.Granted, b.acquire(q).Status)
	res, err = b.d.Abandon(b.ctx, b.db, &dialect.AbandonParams{Name: q.Name, LeaseID: w, RequestID: q.RequestID})
	require.NoError(t, err)
	require.Equal(t, []string{"m"}, res.Freed)
	b.grant("m", h, dialect.Exclusive)
}

func testDowngrade(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
	tok := b.grant("n", a, dialect.Exclusive)
	b.blocked(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Shared})
	ok, err := b.d.Downgrade(b.ctx, b.db, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok})
	require.NoError(t, err)
	require.True(t, ok)
	b.grant("n", c, dialect.Shared)
	require.True(t, b.release("n", a, tok), "the token is kept")

	dead := b.lease("dead", short)
	td := b.grant("d", dead, dialect.Exclusive)
	b.expire(short)
	ok, err = b.d.Downgrade(b.ctx, b.db, &dialect.HoldRef{Name: "d", LeaseID: dead, Token: td})
	require.NoError(t, err)
	require.False(t, ok, "a dead lease cannot downgrade")
}

func fence(b *lockerBundle, tx *sql.Tx, name string, leaseID, token int64) bool {
	b.t.Helper()
	ok, err := b.d.Fence(b.ctx, b.db, tx, &dialect.HoldRef{Name: name, LeaseID: leaseID, Token: token}, time.Minute)
	require.NoError(b.t, err)
	return ok
}

func testFence(t *testing.T, b *lockerBundle) {
	a := b.lease("a", short)
	tok := b.grant("n", a, dialect.Exclusive)
	for _, tc := range []struct {
		name    string
		token   int64
		leaseID int64
		want    bool
	}{
		{"n", tok, a, true},
		{"n", tok + 1, a, false},
		{"n", tok, a + 1, false},
		{"other", tok, a, false},
	} {
		tx, err := b.db.BeginTx(b.ctx, nil)
		require.NoError(t, err)
		require.Equal(t, tc.want, fence(b, tx, tc.name, tc.leaseID, tc.token), "%+v", tc)
		require.NoError(t, tx.Rollback())
	}
	b.expire(short)
	tx, err := b.db.BeginTx(b.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	require.False(t, fence(b, tx, "n", a, tok), "an expired lease fails the fence even before a takeover")
}

// testFencePins: while a fenced transaction is open, a takeover of the
// expired holder cannot commit; once it ends, the takeover goes through.
func testFencePins(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", 2*short), b.lease("c", time.Minute)
	tok := b.grant("n", a, dialect.Exclusive)
	tx, err := b.db.BeginTx(b.ctx, nil)
	require.NoError(t, err)
	require.True(t, fence(b, tx, "n", a, tok))
	b.expire(2 * short)
	takeoverWaitsFor(t, b, "n", c, tx.Commit)
}

// takeoverWaitsFor checks that lease c, through another pool, cannot take
// name over while a fenced transaction is open, and can once end (its
// commit) has ended it.
func takeoverWaitsFor(t *testing.T, b *lockerBundle, name string, c int64, end func() error) {
	t.Helper()
	other := b.reopen(t)
	ctx, cancel := context.WithTimeout(b.ctx, 4*short)
	res, err := b.d.Acquire(ctx, other, &dialect.AcquireParams{Name: name, LeaseID: c, RequestID: rand.Int64(), Mode: dialect.Exclusive})
	cancel()
	if err == nil {
		require.NotEqual(t, dialect.Granted, res.Status, "a takeover committed while the fenced transaction was open")
	}
	require.NoError(t, end())
	require.Eventually(t, func() bool {
		res, err := b.d.Acquire(b.ctx, other, &dialect.AcquireParams{Name: name, LeaseID: c, RequestID: rand.Int64(), Mode: dialect.Exclusive})
		return err == nil && res.Status == dialect.Granted
	}, 10*time.Second, 10*time.Millisecond)
}

func testDeleteLease(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
	b.grant("x", a, dialect.Exclusive)
	b.grant("y", a, dialect.Shared)
	b.grant("y", a, dialect.Shared)
	b.grant("h", c, dialect.Exclusive)
	b.blocked(dialect.AcquireParams{Name: "h", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true})
	names, err := b.d.DeleteLease(b.ctx, b.db, a)
	require.NoError(t, err)
	sort.Strings(names)
	require.Equal(t, []string{"x", "y"}, names)
	require.Equal(t, 2, b.count(`SELECT COUNT(*) FROM sqldlm_leases`), "the probe lease and c remain")
	require.Zero(t, b.count(`SELECT COUNT(*) FROM sqldlm_waiters`))
	require.Equal(t, 1, b.count(`SELECT COUNT(*) FROM `+b.holds))
}

func testReap(t *testing.T, b *lockerBundle) {
	live := b.lease("live", time.Minute)
	b.grant("shared", live, dialect.Shared)
	b.grant("held-by-live", live, dialect.Exclusive)
	tok := b.grant("idle", live, dialect.Exclusive)
	require.True(t, b.release("idle", live, tok))
	dead := b.lease("dead", short)
	b.grant("held-by-dead", dead, dialect.Exclusive)
	b.grant("shared", dead, dialect.Shared)
	b.blocked(dialect.AcquireParams{Name: "held-by-live", LeaseID: dead, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true})
	b.expire(short)

	res, err := b.d.Reap(b.ctx, b.db, 100, time.Hour)
	require.NoError(t, err)
	// The probe lease of setupLocker has a 1s TTL and may be dead too.
	require.GreaterOrEqual(t, res.Leases, 1)
	require.Equal(t, 2, res.Holds)
	require.Equal(t, 1, res.Waiters)
	require.Zero(t, res.IdleLocks, "rows used within IdleAfter stay")
	sort.Strings(res.Freed)
	require.Equal(t, []string{"held-by-dead", "shared"}, res.Freed)
	require.Zero(t, b.count(`SELECT COUNT(*) FROM sqldlm_waiters`))
	require.Equal(t, 2, b.count(`SELECT COUNT(*) FROM `+b.holds))

	res, err = b.d.Reap(b.ctx, b.db, 100, 0)
	require.NoError(t, err)
	require.Equal(t, 2, res.IdleLocks, "idle rows without holds go: idle and held-by-dead")
	require.Equal(t, 2, b.count(`SELECT COUNT(*) FROM sqldlm_locks`), "rows with holds stay")
}

func testByteWiseNames(t *testing.T, b *lockerBundle) {
	a := b.lease("a", time.Minute)
	for _, name := range []string{"node/1", "Node/1", "node/1 ", "node/1\t", "nöde/1", "no\u0308de/1"} {
		b.grant(name, a, dialect.Exclusive) // each is a different lock
	}
	require.Equal(t, 6, b.count(`SELECT COUNT(*) FROM sqldlm_locks`))
}

// testConcurrentGrants: many connections race for one name; at any time the
// holder rows show at most one exclusive hold.
func testConcurrentGrants(t *testing.T, b *lockerBundle) {
	const workers, rounds = 6, 15
	leases := make([]int64, workers)
	for i := range leases {
		leases[i] = b.lease("w", time.Minute)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := range workers {
		db := b.reopen(t)
		wg.Go(func() {
			for range rounds {
				res, err := b.d.Acquire(b.ctx, db, &dialect.AcquireParams{Name: "hot", LeaseID: leases[i], RequestID: rand.Int64(), Mode: dialect.Exclusive})
				if err != nil {
					if dialect.IsRetryable(err) {
						continue
					}
					errs <- err
					return
				}
				if res.Status != dialect.Granted {
					continue
				}
				// While we hold it, ours must be the only hold of the name.
				var n int
				if err := db.QueryRowContext(b.ctx, `SELECT COUNT(*) FROM `+b.holds+` WHERE name = 'hot'`).Scan(&n); err != nil {
					errs <- err
					return
				}
				if n != 1 {
					errs <- fmt.Errorf("%d holds of an exclusive lock at once", n)
					return
				}
				if _, err := b.d.Release(b.ctx, db, &dialect.HoldRef{Name: "hot", LeaseID: leases[i], Token: res.Token}); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Zero(t, b.count(`SELECT COUNT(*) FROM `+b.holds))
}

// testReleaseTx: a release in the caller's transaction takes effect when it
// commits, and not at all if it rolls back.
func testReleaseTx(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
	tok := b.grant("n", a, dialect.Exclusive)
	releaseTx := func() *sql.Tx {
		tx, err := b.db.BeginTx(b.ctx, nil)
		require.NoError(t, err)
		ok, err := b.d.ReleaseTx(b.ctx, b.db, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok})
		require.NoError(t, err)
		require.True(t, ok)
		return tx
	}
	require.NoError(t, releaseTx().Rollback())
	b.blocked(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive})

	require.NoError(t, releaseTx().Commit())
	b.grant("n", c, dialect.Exclusive)
	require.False(t, b.release("n", a, tok), "the committed release removed the hold")

	tx, err := b.db.BeginTx(b.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	ok, err := b.d.ReleaseTx(b.ctx, b.db, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok})
	require.NoError(t, err)
	require.False(t, ok, "a hold that is gone is reported")
}

// holderPayload returns the payload Locks shows for name's only hold.
func holderPayload(b *lockerBundle, name string) string {
	b.t.Helper()
	locks, err := b.d.Locks(b.ctx, b.db, &dialect.LocksFilter{Prefix: name})
	require.NoError(b.t, err)
	require.Len(b.t, locks, 1)
	require.Len(b.t, locks[0].Holders, 1)
	return locks[0].Holders[0].Payload
}

// testPayload: a hold's payload is stored at grant, replaced while held,
// kept by an upgrade, shown by Locks and handed to whoever takes over.
func testPayload(t *testing.T, b *lockerBundle) {
	a := b.lease("a", time.Minute)
	res := b.acquire(dialect.AcquireParams{Name: "vol/42", LeaseID: a, Mode: dialect.Shared, Payload: "resize volume-42, step 1"})
	require.Equal(t, dialect.Granted, res.Status)
	require.Equal(t, "resize volume-42, step 1", holderPayload(b, "vol/42"))
	long := strings.Repeat("é", dialect.PayloadMaxBytes/2)
	for _, p := range []string{"resize volume-42, step 3 ✓", long, ""} {
		ok, err := b.d.SetPayload(b.ctx, b.db, &dialect.HoldRef{Name: "vol/42", LeaseID: a, Token: res.Token}, p)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, p, holderPayload(b, "vol/42"), "payloads round-trip byte for byte")
	}
	ok, err := b.d.SetPayload(b.ctx, b.db, &dialect.HoldRef{Name: "vol/42", LeaseID: a, Token: res.Token}, "before upgrade")
	require.NoError(t, err)
	require.True(t, ok)
	up := b.acquire(dialect.AcquireParams{Name: "vol/42", LeaseID: a, Mode: dialect.Exclusive, UpgradeToken: res.Token})
	require.Equal(t, dialect.Granted, up.Status)
	require.Equal(t, "before upgrade", holderPayload(b, "vol/42"), "an upgrade keeps the payload")

	dead, c := b.lease("dead", short), b.lease("c", time.Minute)
	b.acquire(dialect.AcquireParams{Name: "vol/7", LeaseID: dead, Mode: dialect.Exclusive, Payload: "snapshot vol-7, step 2 of 5"})
	b.expire(short)
	ok, err = b.d.SetPayload(b.ctx, b.db, &dialect.HoldRef{Name: "vol/7", LeaseID: dead, Token: 1}, "x")
	require.NoError(t, err)
	require.False(t, ok, "no payload update for a hold that is not this lease's")
	took := b.acquire(dialect.AcquireParams{Name: "vol/7", LeaseID: c, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, took.Status)
	require.Len(t, took.TookOver, 1)
	require.Equal(t, "snapshot vol-7, step 2 of 5", took.TookOver[0].Payload, "the takeover carries the dead holder's payload")
}

// testLockDelay: a name reclaimed from a dead holder is not granted until
// the lease has been dead for the delay; a cleanly released one is.
func testLockDelay(t *testing.T, b *lockerBundle) {
	const delay = 600 * time.Millisecond
	c := b.lease("c", time.Minute)
	dead := b.lease("dead", short)
	b.grant("n", dead, dialect.Exclusive)
	b.expire(short)
	bl := b.blocked(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive, LockDelay: delay})
	require.Equal(t, "dead", bl.Owner)
	require.Positive(t, bl.ExpiresIn, "the time left of the delay")
	require.LessOrEqual(t, bl.ExpiresIn, delay)
	b.expire(bl.ExpiresIn)
	res := b.acquire(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive, LockDelay: delay})
	require.Equal(t, dialect.Granted, res.Status, "granted once the delay has passed")
	require.Len(t, res.TookOver, 1)

	require.True(t, b.release("n", c, res.Token))
	clean := b.acquire(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive, LockDelay: time.Hour})
	require.Equal(t, dialect.Granted, clean.Status, "a clean release is not delayed")
}
