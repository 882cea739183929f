package mysql_test

// Group membership on MySQL/MariaDB (schema version 7), beyond the
// conformance suite: the procedures ignore the session's settings, and a
// sweep never waits for a lease row another transaction has locked.

import (
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

var grouper = d.(dialect.Grouper)

// TestGroupIgnoresSessionSettings: on a connection with a frozen SET
// timestamp (2001), autocommit off and an odd time zone, members live by the
// real clock, and every group procedure puts the time zone back and leaves
// no transaction open, on the error path too.
func TestGroupIgnoresSessionSettings(t *testing.T) {
	e := newEnv(t)
	poisoned, check := e.poisoned()
	a := e.lease(e.db.DB, "a", time.Minute)
	ref := dialect.MemberRef{Group: "g", ID: "m", LeaseID: a, RequestID: rand.Int64()}
	res, err := grouper.Join(e.ctx, poisoned, &dialect.JoinParams{Group: ref.Group, ID: ref.ID, LeaseID: a, RequestID: ref.RequestID, Weight: 1})
	require.NoError(t, err)
	require.Equal(t, dialect.Joined, res.Status, "live by SYSDATE(6), not by the frozen NOW()")
	check("join")
	ok, err := grouper.SetMeta(e.ctx, poisoned, &ref, "v2")
	require.NoError(t, err)
	require.True(t, ok)
	check("set meta")
	st, err := grouper.Members(e.ctx, poisoned, "g")
	require.NoError(t, err)
	check("members")
	require.Len(t, st.Members, 1)
	m := st.Members[0]
	require.Equal(t, "v2", m.Meta)
	require.Equal(t, time.UTC, m.Joined.Location())
	require.WithinDuration(t, time.Now(), m.Joined, time.Minute)
	require.Greater(t, m.ExpiresIn, 30*time.Second)
	gen, _, err := grouper.Generation(e.ctx, poisoned, "g")
	require.NoError(t, err)
	require.Equal(t, st.Generation, gen)
	check("generation")
	left, err := grouper.Leave(e.ctx, poisoned, &ref)
	require.NoError(t, err)
	require.True(t, left)
	check("leave")

	// An overlong member id fails (strict mode inside the procedure, whatever
	// the session's sql_mode) and changes nothing.
	_, err = grouper.Join(e.ctx, poisoned, &dialect.JoinParams{Group: "g", ID: strings.Repeat("x", 256), LeaseID: a, RequestID: rand.Int64(), Weight: 1})
	require.Error(t, err)
	check("failed join")
	after, _, err := grouper.Generation(e.ctx, e.db.DB, "g")
	require.NoError(t, err)
	require.Equal(t, gen+1, after, "only the leave moved the generation")
}

// TestGroupSweepSkipsLockedLease: an expired member whose lease row another
// transaction holds locked (here an open FOR UPDATE; in practice a renewal
// in flight, or a DeleteLease waiting for a fenced hold) is left to a later
// sweep instead of stalling every write to the group behind that lock. It
// is still a member in reads, its id stays taken until the sweep
// (a renewal in flight could still keep it), and the next write after the
// lock is gone sweeps it. Reads do not count it gone before a sweep has
// (they flag it expired). The writes run with innodb_lock_wait_timeout = 1,
// so a sweep that waited for the lease row would fail with 1205.
func TestGroupSweepSkipsLockedLease(t *testing.T) {
	e := newEnv(t)
	impatient := e.pool(url.Values{"innodb_lock_wait_timeout": {"1"}})
	const short = 300 * time.Millisecond
	dying, c := e.lease(e.db.DB, "dying", short), e.lease(e.db.DB, "c", time.Minute)
	join := func(id string, lease int64) *dialect.JoinResult {
		t.Helper()
		res, err := grouper.Join(e.ctx, impatient, &dialect.JoinParams{Group: "g", ID: id, LeaseID: lease, RequestID: rand.Int64(), Weight: 1})
		require.NoError(t, err, "join %s", id)
		return res
	}
	require.Equal(t, dialect.Joined, join("dying", dying).Status)
	gen, _, err := grouper.Generation(e.ctx, e.db.DB, "g")
	require.NoError(t, err)
	e.expire(short)

	tx, err := e.db.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	var id int64
	require.NoError(t, tx.QueryRowContext(e.ctx, `SELECT id FROM sqldlm_leases WHERE id = ? FOR UPDATE`, dying).Scan(&id))

	res := join("c", c)
	require.Equal(t, dialect.Joined, res.Status)
	require.Equal(t, gen+1, res.Generation, "the locked lease was not swept")
	taken := join("dying", c)
	require.Equal(t, dialect.MemberTaken, taken.Status, "its id is not free before the sweep")
	require.Equal(t, dying, taken.Holder.LeaseID)
	require.LessOrEqual(t, taken.Holder.ExpiresIn, time.Duration(0))
	st, err := grouper.Members(e.ctx, e.db.DB, "g")
	require.NoError(t, err)
	require.Len(t, st.Members, 2)
	require.Equal(t, "c", st.Members[0].ID)
	require.Equal(t, "dying", st.Members[1].ID)
	require.True(t, st.Members[1].Expired, "flagged, not counted: only a sweep decides")
	require.Equal(t, gen+1, st.Generation)

	require.NoError(t, tx.Rollback())
	res = join("dying", c)
	require.Equal(t, dialect.Joined, res.Status, "swept once the lock is gone")
	require.Equal(t, gen+3, res.Incarnation)
	ok, err := d.RenewLease(e.ctx, e.db.DB, dying)
	require.NoError(t, err)
	require.False(t, ok, "the swept member's lease is broken")
}

// TestGroupMetaLimit: a meta of sqldlm.MetaMaxBytes (8192 bytes of UTF-8)
// is stored whole; one byte more fails rather than being cut.
func TestGroupMetaLimit(t *testing.T) {
	e := newEnv(t)
	a := e.lease(e.db.DB, "a", time.Minute)
	ref := dialect.MemberRef{Group: "g", ID: "m", LeaseID: a, RequestID: rand.Int64()}
	meta := strings.Repeat("é", 4096)
	res, err := grouper.Join(e.ctx, e.db.DB, &dialect.JoinParams{Group: "g", ID: "m", LeaseID: a, RequestID: ref.RequestID, Meta: meta, Weight: 1})
	require.NoError(t, err)
	require.Equal(t, dialect.Joined, res.Status)
	st, err := grouper.Members(e.ctx, e.db.DB, "g")
	require.NoError(t, err)
	require.Equal(t, meta, st.Members[0].Meta)
	_, err = grouper.SetMeta(e.ctx, e.db.DB, &ref, meta+"x")
	require.Error(t, err)
	st, err = grouper.Members(e.ctx, e.db.DB, "g")
	require.NoError(t, err)
	require.Equal(t, meta, st.Members[0].Meta)
}
