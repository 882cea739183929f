package dialecttest

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// ExerciseWithdraw checks that the withdrawal of a request is final:
// whatever of the request runs after Abandon committed (a retry, or a
// statement that was still on its way or waiting in the server when the
// client gave up) can neither grant nor queue it. An upgrade's withdrawal
// keeps the hold it obtained.
func ExerciseWithdraw(t *testing.T, h Harness) {
	runSorted(t, h, map[string]func(t *testing.T, b *lockerBundle){
		"WithdrawnWaiterIsNeverGranted":      testWithdrawnWaiter,
		"WithdrawnRequestIsNeverGranted":     testWithdrawnFreeName,
		"WithdrawnGrantIsDeleted":            testWithdrawnGrant,
		"WithdrawnUpgradeKeepsItsHold":       testWithdrawnUpgradeGranted,
		"WithdrawnUpgradeLeavesSharedHold":   testWithdrawnUpgradeWaiting,
		"WithdrawalRecordGoesWithTheLease":   testWithdrawnRecordDeleted,
		"WithdrawalOfAnotherLeaseIsSeparate": testWithdrawnOtherLease,
	})
}

// requestRows counts the waiter and hold rows of request (lease, id).
func (b *lockerBundle) requestRows(leaseID, id int64) (waiters, holds int) {
	b.t.Helper()
	return b.countArgs(`SELECT COUNT(*) FROM sqldlm_waiters WHERE lease_id = ? AND request_id = ?`, leaseID, id),
		b.countArgs(`SELECT COUNT(*) FROM `+b.holds+` WHERE lease_id = ? AND request_id = ?`, leaseID, id)
}

func (b *lockerBundle) withdraw(p dialect.AbandonParams) *dialect.AbandonResult {
	b.t.Helper()
	res, err := b.d.Abandon(b.ctx, b.db, &p)
	require.NoError(b.t, err)
	return res
}

// A queued request is withdrawn; the holder then releases. The request's
// late statement (the same lease and request id, queued or not) is answered
// Withdrawn and leaves no row.
func testWithdrawnWaiter(t *testing.T, b *lockerBundle) {
	h, w := b.lease("h", time.Minute), b.lease("w", time.Minute)
	th := b.grant("n", h, dialect.Exclusive)
	p := dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
	b.blocked(p)
	res := b.withdraw(dialect.AbandonParams{Name: "n", LeaseID: w, RequestID: p.RequestID})
	require.Empty(t, res.Freed)
	require.Zero(t, res.Kept)
	require.True(t, b.release("n", h, th))
	for _, enqueue := range []bool{true, false} {
		p.Enqueue = enqueue
		require.Equal(t, dialect.Withdrawn, b.acquire(p).Status, "a late acquire (enqueue %v) of a withdrawn request", enqueue)
	}
	waiters, holds := b.requestRows(w, p.RequestID)
	require.Zero(t, waiters+holds, "a withdrawn request left a row")
	// The name is free for everyone else.
	b.grant("n", h, dialect.Exclusive)
}

// A request withdrawn before any of its statements ran (its first statement
// was still on its way) is never granted, on a free name either.
func testWithdrawnFreeName(t *testing.T, b *lockerBundle) {
	w := b.lease("w", time.Minute)
	for _, mode := range []dialect.Mode{dialect.Shared, dialect.Exclusive} {
		name := "free-" + string(rune(mode))
		id := rand.Int64()
		res := b.withdraw(dialect.AbandonParams{Name: name, LeaseID: w, RequestID: id})
		require.Empty(t, res.Freed)
		for _, enqueue := range []bool{false, true} {
			got := b.acquire(dialect.AcquireParams{Name: name, LeaseID: w, RequestID: id, Mode: mode, Enqueue: enqueue})
			require.Equal(t, dialect.Withdrawn, got.Status, "mode %c, enqueue %v", mode, enqueue)
		}
		waiters, holds := b.requestRows(w, id)
		require.Zero(t, waiters+holds)
		b.grant(name, w, mode) // another request of the same lease is not affected
	}
}

// A request granted before its withdrawal loses the hold, and a repeat of
// it is not granted again.
func testWithdrawnGrant(t *testing.T, b *lockerBundle) {
	w, o := b.lease("w", time.Minute), b.lease("o", time.Minute)
	p := dialect.AcquireParams{Name: "g", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive}
	require.Equal(t, dialect.Granted, b.acquire(p).Status)
	res := b.withdraw(dialect.AbandonParams{Name: "g", LeaseID: w, RequestID: p.RequestID})
	require.Equal(t, []string{"g"}, res.Freed)
	require.Zero(t, res.Kept)
	require.Equal(t, dialect.Withdrawn, b.acquire(p).Status)
	b.grant("g", o, dialect.Exclusive)
}

// An upgrade granted before its withdrawal (the answer was lost) keeps its
// exclusive hold, which replaced the caller's shared one: the withdrawal
// reports its token instead of deleting it.
func testWithdrawnUpgradeGranted(t *testing.T, b *lockerBundle) {
	a, o := b.lease("a", time.Minute), b.lease("o", time.Minute)
	ts := b.grant("u", a, dialect.Shared)
	up := dialect.AcquireParams{Name: "u", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: ts}
	got := b.acquire(up)
	require.Equal(t, dialect.Granted, got.Status)
	res := b.withdraw(dialect.AbandonParams{Name: "u", LeaseID: a, RequestID: up.RequestID, KeepHold: true})
	require.Empty(t, res.Freed)
	require.Equal(t, got.Token, res.Kept, "the withdrawal reports the upgrade's hold")
	_, holds := b.requestRows(a, up.RequestID)
	require.Equal(t, 1, holds, "the upgrade's hold was deleted")
	b.blocked(dialect.AcquireParams{Name: "u", LeaseID: o, Mode: dialect.Shared})
	require.Equal(t, dialect.Withdrawn, b.acquire(up).Status)
	require.True(t, b.release("u", a, got.Token))
}

// An upgrade withdrawn while it waits leaves the caller's shared hold as it
// was, and can no longer be granted when the other holder leaves.
func testWithdrawnUpgradeWaiting(t *testing.T, b *lockerBundle) {
	a, o := b.lease("a", time.Minute), b.lease("o", time.Minute)
	ts := b.grant("u", a, dialect.Shared)
	to := b.grant("u", o, dialect.Shared)
	up := dialect.AcquireParams{Name: "u", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: ts}
	b.blocked(up)
	res := b.withdraw(dialect.AbandonParams{Name: "u", LeaseID: a, RequestID: up.RequestID, KeepHold: true})
	require.Empty(t, res.Freed)
	require.Zero(t, res.Kept)
	require.True(t, b.release("u", o, to))
	require.Equal(t, dialect.Withdrawn, b.acquire(up).Status)
	waiters, holds := b.requestRows(a, up.RequestID)
	require.Zero(t, waiters+holds)
	// The shared hold is still there, and still the caller's.
	b.blocked(dialect.AcquireParams{Name: "u", LeaseID: o, Mode: dialect.Exclusive})
	require.True(t, b.release("u", a, ts))
}

// The record of a withdrawal goes with its lease (DeleteLease, and Reap of
// a dead lease).
func testWithdrawnRecordDeleted(t *testing.T, b *lockerBundle) {
	records := func(leaseID int64) int {
		return b.countArgs(`SELECT COUNT(*) FROM sqldlm_withdrawn WHERE lease_id = ?`, leaseID)
	}
	closed := b.lease("closed", time.Minute)
	b.withdraw(dialect.AbandonParams{Name: "r", LeaseID: closed, RequestID: rand.Int64()})
	require.Equal(t, 1, records(closed))
	_, err := b.d.DeleteLease(b.ctx, b.db, closed)
	require.NoError(t, err)
	require.Zero(t, records(closed))

	dead := b.lease("dead", short)
	b.withdraw(dialect.AbandonParams{Name: "r", LeaseID: dead, RequestID: rand.Int64()})
	require.Equal(t, 1, records(dead))
	b.expire(short)
	_, err = b.d.Reap(b.ctx, b.db, 100, time.Hour)
	require.NoError(t, err)
	require.Zero(t, records(dead))
}

// A withdrawal is of one (lease, request): the same request id under
// another lease (a request that moved to a new lease) is not withdrawn.
func testWithdrawnOtherLease(t *testing.T, b *lockerBundle) {
	old, cur := b.lease("old", time.Minute), b.lease("cur", time.Minute)
	id := rand.Int64()
	b.withdraw(dialect.AbandonParams{Name: "m", LeaseID: old, RequestID: id})
	got := b.acquire(dialect.AcquireParams{Name: "m", LeaseID: cur, RequestID: id, Mode: dialect.Exclusive, Enqueue: true})
	require.Equal(t, dialect.Granted, got.Status)
}
