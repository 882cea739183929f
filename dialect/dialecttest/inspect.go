package dialecttest

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

func exerciseInspector(t *testing.T, h Harness) {
	tests := map[string]func(t *testing.T, b *lockerBundle){
		"LocksShowsHoldersAndWaiters": testLocksState,
		"LocksFilters":                testLocksFilters,
		"LeasesAndBreak":              testLeasesAndBreak,
		"Views":                       testViews,
	}
	runSorted(t, h, tests)
}

func testLocksState(t *testing.T, b *lockerBundle) {
	a, s1, s2 := b.lease("owner-a", time.Minute), b.lease("owner-s1", time.Minute), b.lease("owner-s2", time.Minute)
	d, e := b.lease("owner-d", time.Minute), b.lease("owner-e", time.Minute)
	ta := b.grant("node/1", a, dialect.Exclusive)
	b.grant("vol/1", s1, dialect.Shared)
	b.grant("vol/1", s2, dialect.Shared)
	dead := b.lease("owner-dead", short)
	b.grant("gone/1", dead, dialect.Exclusive)
	b.blocked(dialect.AcquireParams{Name: "node/1", LeaseID: d, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true})
	b.blocked(dialect.AcquireParams{Name: "node/1", LeaseID: e, RequestID: rand.Int64(), Mode: dialect.Shared, Enqueue: true})
	b.expire(short)

	locks, err := b.d.Locks(b.ctx, b.db, &dialect.LocksFilter{})
	require.NoError(t, err)
	var names []string
	for _, l := range locks {
		names = append(names, l.Name)
	}
	require.Equal(t, []string{"gone/1", "node/1", "vol/1"}, names)

	gone := locks[0]
	require.Len(t, gone.Holders, 1)
	require.False(t, gone.Holders[0].Live, "a dead lease's hold is shown as such")
	require.Negative(t, gone.Holders[0].ExpiresIn)

	node := locks[1]
	require.Equal(t, ta, node.Token)
	require.Len(t, node.Holders, 1)
	hd := node.Holders[0]
	require.Equal(t, "owner-a", hd.Owner)
	require.Equal(t, a, hd.LeaseID)
	require.Equal(t, dialect.Exclusive, hd.Mode)
	require.Equal(t, ta, hd.Token)
	require.True(t, hd.Live)
	require.GreaterOrEqual(t, hd.HeldFor, short, "ages come from the server clock (b.expire waited that long)")
	require.Less(t, hd.HeldFor, 30*time.Second)
	require.Greater(t, hd.ExpiresIn, 30*time.Second)
	require.WithinDuration(t, time.Now(), hd.Since, time.Minute)
	require.Len(t, node.Waiters, 2)
	require.Equal(t, "owner-d", node.Waiters[0].Owner)
	require.Equal(t, 1, node.Waiters[0].Position)
	require.Equal(t, dialect.Exclusive, node.Waiters[0].Mode)
	require.Equal(t, "owner-e", node.Waiters[1].Owner)
	require.Equal(t, 2, node.Waiters[1].Position)
	require.GreaterOrEqual(t, node.Waiters[0].Waited, short)

	vol := locks[2]
	require.Len(t, vol.Holders, 2)
	require.Equal(t, "owner-s1", vol.Holders[0].Owner)
	require.Equal(t, "owner-s2", vol.Holders[1].Owner)
	require.Empty(t, vol.Waiters)
}

func testLocksFilters(t *testing.T, b *lockerBundle) {
	a, w := b.lease("owner-a", time.Minute), b.lease("owner-w", time.Minute)
	for _, name := range []string{"a_b", "a%c", "axb", `a\d`, "node/1", "node/2", "nodes"} {
		b.grant(name, a, dialect.Exclusive)
	}
	b.blocked(dialect.AcquireParams{Name: "node/2", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Shared, Enqueue: true})
	for _, tc := range []struct {
		filter dialect.LocksFilter
		want   []string
	}{
		{dialect.LocksFilter{Prefix: "a_"}, []string{"a_b"}},
		{dialect.LocksFilter{Prefix: "a%"}, []string{"a%c"}},
		{dialect.LocksFilter{Prefix: `a\`}, []string{`a\d`}},
		{dialect.LocksFilter{Prefix: "node/"}, []string{"node/1", "node/2"}},
		{dialect.LocksFilter{Owner: "owner-w"}, []string{"node/2"}},
		{dialect.LocksFilter{Prefix: "node/", Owner: "owner-a"}, []string{"node/1", "node/2"}},
		{dialect.LocksFilter{Owner: "nobody"}, nil},
	} {
		locks, err := b.d.Locks(b.ctx, b.db, &tc.filter)
		require.NoError(t, err)
		var got []string
		for _, l := range locks {
			got = append(got, l.Name)
		}
		require.Equal(t, tc.want, got, "%+v", tc.filter)
	}
}

func testLeasesAndBreak(t *testing.T, b *lockerBundle) {
	a, c, w := b.lease("owner-a", time.Minute), b.lease("owner-c", time.Minute), b.lease("owner-w", time.Minute)
	ta := b.grant("stack/7", a, dialect.Exclusive)
	b.grant("other", a, dialect.Shared)
	b.grant("other", c, dialect.Shared)
	pw := dialect.AcquireParams{Name: "stack/7", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
	b.blocked(pw)

	leases, err := b.d.Leases(b.ctx, b.db)
	require.NoError(t, err)
	byOwner := map[string]dialect.LeaseState{}
	for _, l := range leases {
		byOwner[l.Owner] = l
	}
	require.Equal(t, 2, byOwner["owner-a"].Holds)
	require.Equal(t, 1, byOwner["owner-w"].Waits)
	require.True(t, byOwner["owner-a"].Live)
	require.Greater(t, byOwner["owner-a"].ExpiresIn, 30*time.Second)
	require.WithinDuration(t, time.Now(), byOwner["owner-a"].Created, time.Minute)

	broken, err := b.d.Break(b.ctx, b.db, "stack/7", "someone-else")
	require.NoError(t, err)
	require.Empty(t, broken, "the owner filter spares other owners")
	broken, err = b.d.Break(b.ctx, b.db, "stack/7", "")
	require.NoError(t, err)
	require.Len(t, broken, 1)
	require.Equal(t, a, broken[0].ID)

	ok, err := b.d.RenewLease(b.ctx, b.db, a)
	require.NoError(t, err)
	require.False(t, ok, "the holder learns of the break at its next renewal")
	tx, err := b.db.BeginTx(b.ctx, nil)
	require.NoError(t, err)
	require.False(t, fence(b, tx, "stack/7", a, ta), "and its Fence fails")
	require.NoError(t, tx.Rollback())
	res := b.acquire(pw)
	require.Equal(t, dialect.Granted, res.Status, "the waiter takes the name over")
	require.Len(t, res.TookOver, 1)
	require.Equal(t, "owner-a", res.TookOver[0].Owner)
	require.Equal(t, ta, res.TookOver[0].Token)
	require.True(t, res.TookOver[0].Broken, "the takeover knows the lease was broken")

	leases, err = b.d.Leases(b.ctx, b.db)
	require.NoError(t, err)
	for _, l := range leases {
		if l.ID == a {
			require.True(t, l.Broken)
			require.False(t, l.Live)
		}
	}
	broken, err = b.d.Break(b.ctx, b.db, "stack/7", "")
	require.NoError(t, err)
	require.Len(t, broken, 1, "now the waiter's lease holds it")
	require.Equal(t, w, broken[0].ID)
}

func testViews(t *testing.T, b *lockerBundle) {
	a, w := b.lease("owner-a", time.Minute), b.lease("owner-w", time.Minute)
	b.grant("n", a, dialect.Exclusive)
	b.blocked(dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Shared, Enqueue: true})
	require.Equal(t, 1, b.count(`SELECT COUNT(*) FROM sqldlm_holders_view WHERE owner = 'owner-a' AND mode = 'exclusive' AND expires_in_seconds > 30`))
	require.Equal(t, 1, b.count(`SELECT COUNT(*) FROM sqldlm_waiters_view WHERE owner = 'owner-w' AND mode = 'shared' AND position = 1`))
	require.Equal(t, 1, b.count(`SELECT COUNT(*) FROM sqldlm_leases_view WHERE owner = 'owner-a' AND holds = 1 AND expires_in_seconds > 30`))
}
