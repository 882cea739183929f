package dialecttest

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// groupBundle is a lockerBundle with the dialect's Grouper.
type groupBundle struct {
	*lockerBundle
	g dialect.Grouper
}

func exerciseGrouper(t *testing.T, h Harness) {
	tests := map[string]func(t *testing.T, b *groupBundle){
		"JoinAndMembers":             testJoinAndMembers,
		"OneMemberPerID":             testMemberIDTaken,
		"RepeatedJoinIsIdempotent":   testRepeatedJoin,
		"LeaveWithdrawsTheRequest":   testLeave,
		"RejoinHasHigherIncarnation": testRejoin,
		"SetMeta":                    testSetMeta,
		"ExpiryChangesGeneration":    testMemberExpiry,
		"RenewalInFlightWins":        testRenewalInFlightWins,
		"AuditLog":                   testMemberAudit,
		"RenewedMemberStays":         testRenewedMemberStays,
		"DeadLeaseCannotJoin":        testJoinDeadLease,
		"DeletedLeaseLeaves":         testDeletedLeaseLeaves,
		"GenerationNeverGoesBack":    testGenerationMonotonic,
	}
	for _, name := range slices.Sorted(maps.Keys(tests)) {
		t.Run(name, func(t *testing.T) {
			h.skipListed(t)
			t.Parallel()
			b := setupLocker(t, h)
			tests[name](t, &groupBundle{lockerBundle: b, g: h.Dialect})
		})
	}
}

func (b *groupBundle) join(p dialect.JoinParams) *dialect.JoinResult {
	b.t.Helper()
	if p.RequestID == 0 {
		p.RequestID = rand.Int64()
	}
	if p.Weight == 0 {
		p.Weight = 1
	}
	res, err := b.g.Join(b.ctx, b.db, &p)
	require.NoError(b.t, err)
	return res
}

func (b *groupBundle) joined(group, id string, lease int64) (int64, dialect.MemberRef) {
	b.t.Helper()
	ref := dialect.MemberRef{Group: group, ID: id, LeaseID: lease, RequestID: rand.Int64()}
	res := b.join(dialect.JoinParams{Group: group, ID: id, LeaseID: lease, RequestID: ref.RequestID})
	require.Equal(b.t, dialect.Joined, res.Status, "join %s as %s: %+v", group, id, res)
	require.Equal(b.t, res.Generation, res.Incarnation, "the incarnation is the generation right after the join")
	return res.Incarnation, ref
}

func (b *groupBundle) members(group string) *dialect.GroupState {
	b.t.Helper()
	st, err := b.g.Members(b.ctx, b.db, group)
	require.NoError(b.t, err)
	gen, _, err := b.g.Generation(b.ctx, b.db, group)
	require.NoError(b.t, err)
	require.GreaterOrEqual(b.t, gen, st.Generation, "Generation read after Members")
	return st
}

func (b *groupBundle) generation(group string) int64 {
	b.t.Helper()
	gen, _, err := b.g.Generation(b.ctx, b.db, group)
	require.NoError(b.t, err)
	return gen
}

func (b *groupBundle) leave(ref dialect.MemberRef) bool {
	b.t.Helper()
	left, err := b.g.Leave(b.ctx, b.db, &ref)
	require.NoError(b.t, err)
	return left
}

func ids(st *dialect.GroupState) []string {
	out := []string{}
	for _, m := range st.Members {
		out = append(out, m.ID)
	}
	return out
}

func testJoinAndMembers(t *testing.T, b *groupBundle) {
	empty := b.members("conductors")
	require.Empty(t, empty.Members)
	a := b.lease("host-a", time.Minute)
	res := b.join(dialect.JoinParams{Group: "conductors", ID: "c-1", LeaseID: a, Meta: `{"rack":1}`, Weight: 2})
	require.Equal(t, dialect.Joined, res.Status)
	require.Greater(t, res.Incarnation, empty.Generation)
	c := b.lease("host-c", time.Minute)
	inc2, _ := b.joined("conductors", "c-0", c)
	require.Greater(t, inc2, res.Incarnation)
	b.joined("other-group", "c-1", c) // groups are independent

	st := b.members("conductors")
	require.Equal(t, []string{"c-0", "c-1"}, ids(st), "sorted by id")
	require.Equal(t, inc2, st.Generation)
	m := st.Members[1]
	require.Equal(t, "host-a", m.Owner)
	require.Equal(t, a, m.LeaseID)
	require.Equal(t, res.Incarnation, m.Incarnation)
	require.Equal(t, `{"rack":1}`, m.Meta)
	require.Equal(t, 2.0, m.Weight)
	require.Greater(t, m.ExpiresIn, 50*time.Second)
	require.LessOrEqual(t, m.ExpiresIn, time.Minute)
	now, err := b.d.Now(b.ctx, b.db)
	require.NoError(t, err)
	require.WithinDuration(t, now, m.Joined, 10*time.Second)
}

func testMemberIDTaken(t *testing.T, b *groupBundle) {
	a, c := b.lease("host-a", time.Minute), b.lease("host-c", time.Minute)
	inc, _ := b.joined("g", "m", a)
	gen := b.generation("g")
	for _, lease := range []int64{c, a} { // another lease, and another request of the same lease
		res := b.join(dialect.JoinParams{Group: "g", ID: "m", LeaseID: lease})
		require.Equal(t, dialect.MemberTaken, res.Status)
		require.NotNil(t, res.Holder)
		require.Equal(t, "host-a", res.Holder.Owner)
		require.Equal(t, a, res.Holder.LeaseID)
		require.Equal(t, inc, res.Holder.Incarnation)
		require.Greater(t, res.Holder.ExpiresIn, 50*time.Second)
	}
	require.Equal(t, gen, b.generation("g"), "a refused join changes nothing")
}

func testRepeatedJoin(t *testing.T, b *groupBundle) {
	a := b.lease("a", time.Minute)
	p := dialect.JoinParams{Group: "g", ID: "m", LeaseID: a, RequestID: rand.Int64(), Weight: 1}
	first := b.join(p)
	require.Equal(t, dialect.Joined, first.Status)
	again := b.join(p)
	require.Equal(t, dialect.Joined, again.Status)
	require.Equal(t, first.Incarnation, again.Incarnation)
	require.Equal(t, first.Generation, b.generation("g"), "a repeated join changes nothing")
}

func testLeave(t *testing.T, b *groupBundle) {
	a := b.lease("a", time.Minute)
	_, ref := b.joined("g", "m", a)
	gen := b.generation("g")
	require.False(t, b.leave(dialect.MemberRef{Group: "g", ID: "m", LeaseID: a, RequestID: ref.RequestID + 1}),
		"another request's leave deletes nothing")
	require.True(t, b.leave(ref))
	require.Equal(t, gen+1, b.generation("g"))
	require.False(t, b.leave(ref), "a second leave finds nothing")
	require.Empty(t, b.members("g").Members)
	// A join statement of the withdrawn request that arrives late joins nothing.
	res := b.join(dialect.JoinParams{Group: "g", ID: "m", LeaseID: a, RequestID: ref.RequestID})
	require.Equal(t, dialect.JoinWithdrawn, res.Status)
	require.Empty(t, b.members("g").Members)
	require.Equal(t, gen+1, b.generation("g"))
	// So does one that arrives after a leave that found nothing (the join
	// never ran before it).
	ghost := dialect.MemberRef{Group: "g", ID: "ghost", LeaseID: a, RequestID: rand.Int64()}
	require.False(t, b.leave(ghost))
	res = b.join(dialect.JoinParams{Group: "g", ID: "ghost", LeaseID: a, RequestID: ghost.RequestID})
	require.Equal(t, dialect.JoinWithdrawn, res.Status)
}

func testRejoin(t *testing.T, b *groupBundle) {
	a := b.lease("a", time.Minute)
	inc1, ref := b.joined("g", "m", a)
	require.True(t, b.leave(ref))
	inc2, _ := b.joined("g", "m", a)
	require.Greater(t, inc2, inc1)
	require.Equal(t, inc2, b.members("g").Members[0].Incarnation)
}

func testSetMeta(t *testing.T, b *groupBundle) {
	a := b.lease("a", time.Minute)
	_, ref := b.joined("g", "m", a)
	gen := b.generation("g")
	ok, err := b.g.SetMeta(b.ctx, b.db, &ref, "v2")
	require.NoError(t, err)
	require.True(t, ok)
	st := b.members("g")
	require.Equal(t, "v2", st.Members[0].Meta)
	require.Equal(t, gen+1, st.Generation)
	other := ref
	other.RequestID++
	ok, err = b.g.SetMeta(b.ctx, b.db, &other, "v3")
	require.NoError(t, err)
	require.False(t, ok, "another request's update changes nothing")
	dying := b.lease("s", short)
	_, sref := b.joined("g", "s", dying)
	b.expire(short)
	ok, err = b.g.SetMeta(b.ctx, b.db, &sref, "late")
	require.NoError(t, err)
	require.False(t, ok, "a dead member's meta is not updated")
}

func testMemberExpiry(t *testing.T, b *groupBundle) {
	live := b.lease("live", time.Minute)
	b.joined("g", "live", live)
	dying := b.lease("dying", short)
	b.joined("g", "dying", dying)
	gen := b.generation("g")
	b.expire(short)
	// A read reports the expiry without deciding it: the member is flagged,
	// and the generation has not moved.
	st := b.members("g")
	require.Equal(t, []string{"dying", "live"}, ids(st))
	require.True(t, st.Members[0].Expired)
	require.False(t, st.Members[1].Expired)
	require.Negative(t, st.Members[0].ExpiresIn)
	n, expired, err := b.g.Generation(b.ctx, b.db, "g")
	require.NoError(t, err)
	require.Equal(t, gen, n)
	require.Equal(t, 1, expired)
	// A sweep decides it: the lease is broken, the member gone, the
	// generation one higher, and it never goes back.
	swept, err := b.g.Sweep(b.ctx, b.db, "g")
	require.NoError(t, err)
	require.Equal(t, gen+1, swept)
	st = b.members("g")
	require.Equal(t, []string{"live"}, ids(st))
	require.Equal(t, gen+1, st.Generation)
	n, expired, err = b.g.Generation(b.ctx, b.db, "g")
	require.NoError(t, err)
	require.Equal(t, gen+1, n)
	require.Zero(t, expired)
	ok, err := b.d.RenewLease(b.ctx, b.db, dying)
	require.NoError(t, err)
	require.False(t, ok, "the swept member's lease stays expired")
	// A writing operation sweeps too, and the dead member's id is free.
	other := b.lease("other", time.Minute)
	inc, _ := b.joined("g", "dying", other)
	require.Equal(t, gen+2, inc)
}

// A renewal that ran before the member's expiry but has not committed
// when the expiry passes wins: reads do not count the member gone, and a
// sweep waits for the renewal (or skips the lease) instead of ending it.
// Counting it gone then back would make the generation go back.
func testRenewalInFlightWins(t *testing.T, b *groupBundle) {
	const ttl = 3 * time.Second
	a := b.lease("a", ttl)
	b.joined("g", "a", a)
	gen := b.generation("g")
	commitRenewal := renewalInFlight(t, b.ctx, b.d, b.db, b.reopen, a, ttl, b.expire)
	st := b.members("g")
	require.Equal(t, []string{"a"}, ids(st), "a read does not count an expiry whose renewal may commit")
	require.Equal(t, gen, st.Generation)
	sweep := make(chan error, 1)
	go func() {
		_, err := b.g.Sweep(b.ctx, b.reopen(t), "g")
		sweep <- err
	}()
	swept := false
	select {
	case err := <-sweep:
		// It skipped the locked lease (or could not wait for it): the
		// member must still be there.
		if err != nil {
			require.True(t, dialect.IsRetryable(err), "sweep: %v", err)
		}
		swept = true
	case <-time.After(300 * time.Millisecond):
		// It waits for the renewal's transaction.
	}
	renewed := commitRenewal()
	if !swept {
		select {
		case err := <-sweep:
			if err != nil {
				require.True(t, dialect.IsRetryable(err), "sweep: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the sweep never ended")
		}
	}
	if !renewed {
		// The sweep ended the lease first (another Galera node): the
		// member must be gone and the lease stay ended.
		_, err := b.g.Sweep(b.ctx, b.db, "g")
		require.NoError(t, err)
		require.Empty(t, b.members("g").Members)
		ok, err := b.d.RenewLease(b.ctx, b.db, a)
		require.NoError(t, err)
		require.False(t, ok)
		return
	}
	st = b.members("g")
	require.Equal(t, []string{"a"}, ids(st), "the renewed member stays")
	require.Equal(t, gen, st.Generation, "the generation did not move")
	require.False(t, st.Members[0].Expired)
	ok, err := b.d.RenewLease(b.ctx, b.db, a)
	require.NoError(t, err)
	require.True(t, ok, "the renewed lease is live")
}

// renewIn renews lease id on conn, inside whatever transaction conn has
// open, with the dialect's own statement where it is plain SQL.
func renewIn(ctx context.Context, d dialect.Dialect, conn *sql.Conn, id int64) (bool, error) {
	var q string
	switch d.Name() {
	case "postgres":
		q = `UPDATE sqldlm_leases SET renewed_at = clock_timestamp(),
		        expires_at = clock_timestamp() + ttl_us * interval '1 microsecond'
		      WHERE id = $1 AND broken_at IS NULL AND expires_at > clock_timestamp()`
	case "mysql":
		q = `UPDATE sqldlm_leases SET renewed_at = UTC_TIMESTAMP(6), expires_at = UTC_TIMESTAMP(6) + INTERVAL ttl_us MICROSECOND
		      WHERE id = ? AND broken_at IS NULL AND expires_at > UTC_TIMESTAMP(6)`
	default:
		q = `UPDATE sqldlm_leases SET renewed_at = n, expires_at = n + ttl_us
		       FROM (SELECT CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER) * 1000 AS n)
		      WHERE id = ? AND broken_at IS NULL AND expires_at > n`
	}
	res, err := conn.ExecContext(ctx, q, id)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// renewalInFlight renews lease id (created with ttl) 800ms before its
// expiry inside a transaction left open until after the expiry, and
// returns the function that commits it. Every operation that decides an
// expiry must then wait for the commit (or pass the lease over) and see
// the lease live: deciding on the expired version it read, it would end a
// lease whose renewal succeeds. Through several Galera nodes row locks are
// not shared: an operation on another node may end the lease first, and
// certification then fails the renewal's COMMIT (1213, retryable; the
// client retries the renewal and finds the lease ended). commit reports
// whether the renewal committed; either way the two must agree.
func renewalInFlight(t *testing.T, ctx context.Context, d dialect.Testable, db *sql.DB, reopen func(testing.TB) *sql.DB,
	id int64, ttl time.Duration, expire func(time.Duration)) (commit func() bool) {
	t.Helper()
	// 800ms: the connection and the renewal must be done before the expiry
	// even on a loaded machine (400ms was not, once, through Galera at a
	// load of 26 on 2 cores).
	expire(ttl - 800*time.Millisecond)
	conn, err := reopen(t).Conn(ctx)
	require.NoError(t, err)
	_, err = conn.ExecContext(ctx, "BEGIN")
	require.NoError(t, err)
	committed := false
	t.Cleanup(func() {
		if !committed {
			_, _ = conn.ExecContext(context.Background(), "ROLLBACK")
		}
		conn.Close()
	})
	ok, err := renewIn(ctx, d, conn, id)
	require.NoError(t, err)
	require.True(t, ok, "the renewal ran after the expiry: the machine is too slow for this case")
	expire(time.Second) // past the expiry the lease had
	return func() bool {
		t.Helper()
		_, err := conn.ExecContext(ctx, "COMMIT")
		committed = true
		if err != nil {
			err = d.ClassifyError(err)
			require.True(t, dialect.IsRetryable(err), "the renewal's commit: %v", err)
			return false
		}
		return true
	}
}

func testRenewedMemberStays(t *testing.T, b *groupBundle) {
	const ttl = 600 * time.Millisecond
	a := b.lease("a", ttl)
	b.joined("g", "a", a)
	c := b.lease("c", time.Minute)
	for i := range 8 {
		ok, err := b.d.RenewLease(b.ctx, b.db, a)
		require.NoError(t, err)
		require.True(t, ok, "renewal %d", i)
		b.joined("g", fmt.Sprintf("c-%d", i), c) // a sweep each time
		time.Sleep(ttl / 4)                      // spacing of the renewals
	}
	require.Contains(t, ids(b.members("g")), "a")
}

func testJoinDeadLease(t *testing.T, b *groupBundle) {
	a := b.lease("a", short)
	b.expire(short)
	res := b.join(dialect.JoinParams{Group: "g", ID: "m", LeaseID: a})
	require.Equal(t, dialect.JoinLeaseNotLive, res.Status)
	res = b.join(dialect.JoinParams{Group: "g", ID: "m", LeaseID: rand.Int64()})
	require.Equal(t, dialect.JoinLeaseNotLive, res.Status, "an unknown lease cannot join")
	require.Empty(t, b.members("g").Members)
}

func testDeletedLeaseLeaves(t *testing.T, b *groupBundle) {
	a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
	b.joined("g", "a", a)
	b.joined("g", "c", c)
	gen := b.generation("g")
	_, err := b.d.DeleteLease(b.ctx, b.db, a)
	require.NoError(t, err)
	st := b.members("g")
	require.Equal(t, []string{"c"}, ids(st))
	require.Equal(t, gen+1, st.Generation)
	inc, _ := b.joined("g", "a", c)
	require.Equal(t, gen+2, inc)
}

// Several writers join and leave while readers check that the generation
// never goes back and that a view's members are all live.
func testGenerationMonotonic(t *testing.T, b *groupBundle) {
	pool := b.reopen(t)
	// A member that expires while the writers run (joined first: through
	// another Galera node its join could fail certification against theirs).
	dying := b.lease("dying", short)
	b.joined("g", "dying", dying)
	start := time.Now()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 3 {
		lease := b.lease(fmt.Sprintf("w%d", w), time.Minute)
		wg.Go(func() {
			// Until the short lease below has surely expired.
			for i := 0; i < 15 || time.Since(start) < 3*short; i++ {
				ref := dialect.MemberRef{Group: "g", ID: fmt.Sprintf("w%d-%d", w, i%3), LeaseID: lease, RequestID: rand.Int64()}
				res, err := b.g.Join(b.ctx, pool, &dialect.JoinParams{Group: ref.Group, ID: ref.ID, LeaseID: lease, RequestID: ref.RequestID, Weight: 1})
				if err != nil {
					if dialect.IsRetryable(err) {
						continue
					}
					t.Errorf("join: %v", err)
					return
				}
				if res.Status == dialect.Joined && i%2 == 0 {
					if _, err := b.g.Leave(b.ctx, pool, &ref); err != nil && !dialect.IsRetryable(err) {
						t.Errorf("leave: %v", err)
						return
					}
				}
			}
		})
	}
	readers := sync.WaitGroup{}
	readers.Go(func() {
		var last int64
		for {
			select {
			case <-stop:
				return
			default:
			}
			gen, _, err := b.g.Generation(b.ctx, b.db, "g")
			if err != nil {
				t.Errorf("generation: %v", err)
				return
			}
			if gen < last {
				t.Errorf("generation went back from %d to %d", last, gen)
				return
			}
			last = gen
		}
	})
	wg.Wait()
	close(stop)
	readers.Wait()
}

// With the audit log on, joins, meta updates, leaves and swept members
// are written, under MemberAuditName, with the incarnation as the token.
func testMemberAudit(t *testing.T, b *groupBundle) {
	require.NoError(t, b.d.SetAuditSettings(b.ctx, b.db, &dialect.AuditSettings{Enabled: true, Retention: time.Hour}))
	a := b.lease("host-a", time.Minute)
	p := dialect.JoinParams{Group: "g", ID: "m", LeaseID: a, RequestID: rand.Int64(), Meta: "v1", Weight: 1}
	res := b.join(p)
	require.Equal(t, dialect.Joined, res.Status)
	ref := dialect.MemberRef{Group: "g", ID: "m", LeaseID: a, RequestID: p.RequestID}
	ok, err := b.g.SetMeta(b.ctx, b.db, &ref, "v2")
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, b.leave(ref))
	dying := b.lease("host-d", short)
	incD, _ := b.joined("g", "d", dying)
	b.expire(short)
	_, err = b.g.Sweep(b.ctx, b.db, "g")
	require.NoError(t, err)

	type row struct {
		Event   dialect.AuditEvent
		Owner   string
		Token   int64
		Payload string
		Detail  string
	}
	read := func(name string) []row {
		entries, err := b.d.AuditLog(b.ctx, b.db, &dialect.AuditFilter{Name: name})
		require.NoError(t, err)
		var out []row
		for _, e := range entries {
			require.Equal(t, dialect.Exclusive, e.Mode)
			out = append(out, row{e.Event, e.Owner, e.Token, e.Payload, e.Detail})
		}
		return out
	}
	m := read(dialect.MemberAuditName("g", "m"))
	require.ElementsMatch(t, []row{
		{dialect.AuditJoin, "host-a", res.Incarnation, "v1", ""},
		{dialect.AuditUpdate, "host-a", res.Incarnation, "v2", ""},
		{dialect.AuditLeave, "host-a", res.Incarnation, "v2", ""},
	}, m)
	require.ElementsMatch(t, []row{
		{dialect.AuditJoin, "host-d", incD, "", ""},
		{dialect.AuditExpire, "host-d", incD, "", "member"},
	}, read(dialect.MemberAuditName("g", "d")))
}
