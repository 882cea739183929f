package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

func TestJoinMembersLeave(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, c := b.client(t, Config{Owner: "host-a"}), b.client(t, Config{Owner: "host-c"})
		empty, err := a.Members(ctx, "conductors")
		require.NoError(t, err)
		require.Empty(t, empty.Members)

		ma, err := a.Join(ctx, "conductors", "c-a", WithMeta(`{"group":"rack1"}`), WithWeight(2))
		require.NoError(t, err)
		require.Equal(t, "conductors", ma.Group())
		require.Equal(t, "c-a", ma.ID())
		require.Greater(t, ma.Incarnation(), empty.Generation)
		mc, err := c.Join(ctx, "conductors", "c-c")
		require.NoError(t, err)

		v, err := c.Members(ctx, "conductors")
		require.NoError(t, err)
		require.Equal(t, "conductors", v.Group)
		require.Len(t, v.Members, 2)
		got, ok := v.Member("c-a")
		require.True(t, ok)
		require.Equal(t, "host-a", got.Owner)
		require.Equal(t, `{"group":"rack1"}`, got.Meta)
		require.Equal(t, 2.0, got.Weight)
		require.Equal(t, ma.Incarnation(), got.Incarnation)
		require.Positive(t, got.ExpiresIn)
		require.Equal(t, mc.Incarnation(), v.Generation)

		// One member per id: the error says who has it.
		_, err = c.Join(ctx, "conductors", "c-a")
		var exists *MemberExistsError
		require.ErrorAs(t, err, &exists)
		require.ErrorIs(t, err, ErrMemberExists)
		require.Equal(t, "host-a", exists.Owner)
		require.Equal(t, ma.Incarnation(), exists.Incarnation)
		_, err = a.Join(ctx, "conductors", "c-a")
		require.ErrorIs(t, err, ErrMemberExists, "two memberships of one client conflict too")

		require.NoError(t, ma.SetMeta(ctx, `{"group":"rack2"}`))
		v2, err := c.Members(ctx, "conductors")
		require.NoError(t, err)
		got, _ = v2.Member("c-a")
		require.Equal(t, `{"group":"rack2"}`, got.Meta)
		require.Greater(t, v2.Generation, v.Generation)

		require.NoError(t, ma.Leave(ctx))
		<-ma.Done()
		require.ErrorIs(t, ma.Err(), ErrLeft)
		require.NoError(t, ma.Leave(ctx), "Leave is idempotent")
		require.ErrorIs(t, ma.SetMeta(ctx, "x"), ErrLeft)
		v3, err := c.Members(ctx, "conductors")
		require.NoError(t, err)
		require.Equal(t, []string{"c-c"}, memberIDs(v3))
		require.Greater(t, v3.Generation, v2.Generation)

		again, err := a.Join(ctx, "conductors", "c-a")
		require.NoError(t, err)
		require.Greater(t, again.Incarnation(), ma.Incarnation(), "a rejoin has a higher incarnation")

		require.NoError(t, c.Close())
		<-mc.Done()
		require.ErrorIs(t, mc.Err(), ErrClosed)
		v4, err := a.Members(ctx, "conductors")
		require.NoError(t, err)
		require.Equal(t, []string{"c-a"}, memberIDs(v4), "a closed client's member is gone at once")
	})
}

func memberIDs(v GroupView) []string {
	out := []string{}
	for _, m := range v.Members {
		out = append(out, m.ID)
	}
	return out
}

// A member whose client stops renewing (as if it crashed or was cut off)
// learns it is out before any peer sees it leave, and peers see it leave
// once its lease has expired by the database's clock, without any write.
func TestMemberLearnsFirst(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, f := b.faulty(t, Config{Owner: "a", ReapInterval: ReapDisabled})
		obs := b.client(t, Config{Owner: "observer", WatchInterval: 20 * time.Millisecond, ReapInterval: ReapDisabled})
		m, err := a.Join(ctx, "g", "a")
		require.NoError(t, err)
		w, err := obs.Watch(ctx, "g")
		require.NoError(t, err)
		defer w.Close()
		e := <-w.Events()
		require.Equal(t, Resync, e.Kind)
		require.Equal(t, []string{"a"}, memberIDs(e.View))

		f.failDelete.Store(true)
		f.failRenew.Store(true)
		e = <-w.Events()
		require.Equal(t, MemberLeft, e.Kind)
		require.Equal(t, "a", e.Member.ID)
		select {
		case <-m.Done():
		default:
			t.Fatal("a peer saw the member leave before the member knew it was out")
		}
		require.ErrorIs(t, m.Err(), ErrLost)
		require.Empty(t, e.View.Members)
		require.ErrorIs(t, m.SetMeta(ctx, "late"), ErrLost)
	})
}

func TestWatchEvents(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		obs := b.client(t, Config{Owner: "observer", WatchInterval: 20 * time.Millisecond})
		a := b.client(t, Config{Owner: "a"})
		w, err := obs.Watch(ctx, "g")
		require.NoError(t, err)
		next := func(kind EventKind) GroupEvent {
			t.Helper()
			select {
			case e, ok := <-w.Events():
				require.True(t, ok, "watch ended")
				require.Equal(t, kind, e.Kind, "event %+v", e)
				return e
			case <-ctx.Done():
				t.Fatalf("no %v event", kind)
			}
			return GroupEvent{}
		}
		first := next(Resync)
		require.Empty(t, first.View.Members)

		m, err := a.Join(ctx, "g", "a", WithMeta("v1"))
		require.NoError(t, err)
		e := next(MemberJoined)
		require.Equal(t, "a", e.Member.ID)
		require.Equal(t, "v1", e.Member.Meta)
		require.Equal(t, m.Incarnation(), e.Member.Incarnation)

		require.NoError(t, m.SetMeta(ctx, "v2"))
		e = next(MemberUpdated)
		require.Equal(t, "v2", e.Member.Meta)

		// A leave and a rejoin are never invisible, however quick.
		require.NoError(t, m.Leave(ctx))
		m2, err := a.Join(ctx, "g", "a", WithMeta("v2"))
		require.NoError(t, err)
		e = next(MemberLeft)
		require.Equal(t, m.Incarnation(), e.Member.Incarnation)
		e = next(MemberJoined)
		require.Equal(t, m2.Incarnation(), e.Member.Incarnation)
		require.Equal(t, []string{"a"}, memberIDs(e.View))

		require.NoError(t, w.Close())
		_, ok := <-w.Events()
		require.False(t, ok, "Close ends the events")
		require.NoError(t, w.Close(), "Close is idempotent")
	})
}

// The ring of a view is the same on every client, whatever the order in
// which members joined.
func TestGroupViewRing(t *testing.T) {
	t.Parallel()
	b := &lockBundle{kind: "sqlite", db: testdb.OpenMigrated(t, "sqlite")}
	ctx := testCtx(t)
	c1, c2 := b.client(t, Config{}), b.client(t, Config{})
	for _, id := range []string{"n3", "n1"} {
		_, err := c1.Join(ctx, "ring", id)
		require.NoError(t, err)
	}
	_, err := c2.Join(ctx, "ring", "n2", WithWeight(3))
	require.NoError(t, err)
	v1, err := c1.Members(ctx, "ring")
	require.NoError(t, err)
	v2, err := c2.Members(ctx, "ring")
	require.NoError(t, err)
	r1, r2 := v1.Ring(), v2.Ring()
	require.Equal(t, 3, r1.Len())
	counts := map[string]int{}
	for i := range 3000 {
		key := "node-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + time.Duration(i).String()
		require.Equal(t, r1.Owner(key), r2.Owner(key))
		counts[r1.Owner(key)]++
	}
	// Weights 1:3:1: n2 holds about 60% of the keys, more than the others together.
	require.Greater(t, counts["n2"], counts["n1"]+counts["n3"], "weight 3 owns most keys")
}

func TestJoinInvalid(t *testing.T) {
	t.Parallel()
	b := &lockBundle{kind: "sqlite", db: testdb.OpenMigrated(t, "sqlite")}
	c := b.client(t, Config{})
	ctx := testCtx(t)
	for _, tc := range []struct {
		group, id string
		opts      []JoinOption
		want      string
	}{
		{"", "m", nil, "group name is empty"},
		{"g", "", nil, "member id is empty"},
		{strings.Repeat("g", 256), "m", nil, "over the limit"},
		{"g", "a\x00", nil, "NUL"},
		{"g", "m", []JoinOption{WithMeta(strings.Repeat("m", MetaMaxBytes+1))}, "meta"},
		{"g", "m", []JoinOption{WithWeight(0)}, "weight"},
		{"g", "m", []JoinOption{WithWeight(math.Inf(1))}, "weight"},
		{"g", "m", []JoinOption{WithWeight(math.NaN())}, "weight"},
	} {
		_, err := c.Join(ctx, tc.group, tc.id, tc.opts...)
		require.ErrorIs(t, err, ErrInvalidMember)
		require.Contains(t, err.Error(), tc.want)
	}
	_, err := c.Members(ctx, "")
	require.ErrorIs(t, err, ErrInvalidMember)
	_, err = c.Watch(ctx, "")
	require.ErrorIs(t, err, ErrInvalidMember)
	require.NoError(t, c.Close())
	_, err = c.Join(ctx, "g", "m")
	require.True(t, errors.Is(err, ErrClosed), "join after close: %v", err)
	_, err = c.Members(context.Background(), "g")
	require.ErrorIs(t, err, ErrClosed)
}

// On PostgreSQL a change reaches a watcher through the client's listening
// connection, not its next poll.
func TestWatchNotifiedOnPostgres(t *testing.T) {
	t.Parallel()
	b := &lockBundle{kind: "postgres", db: testdb.OpenMigrated(t, "postgres")}
	ctx := testCtx(t)
	obs := b.client(t, Config{Owner: "observer", WatchInterval: time.Hour})
	a := b.client(t, Config{Owner: "a"})
	w, err := obs.Watch(ctx, "g")
	require.NoError(t, err)
	defer w.Close()
	require.Equal(t, Resync, (<-w.Events()).Kind)
	require.Eventually(t, obs.notified, 10*time.Second, 5*time.Millisecond, "the listener is up")
	m, err := a.Join(ctx, "g", "a")
	require.NoError(t, err)
	e := <-w.Events()
	require.Equal(t, MemberJoined, e.Kind)
	require.NoError(t, m.Leave(ctx))
	require.Equal(t, MemberLeft, (<-w.Events()).Kind)
}

// joinFaultDialect loses the answer of the next Join after running it
// (lostJoin), and fails every Leave without running it while failLeave is
// set, unless the caller's ctx carries leaveAllowed.
type joinFaultDialect struct {
	dialect.Dialect
	mu        sync.Mutex
	lostJoin  bool
	failLeave bool
	lostReq   int64 // the request of the Join whose answer was lost
	lateLeave int   // Leaves of lostReq run without leaveAllowed (the janitor's)
}

type leaveAllowed struct{}

func (d *joinFaultDialect) Join(ctx context.Context, db *sql.DB, p *dialect.JoinParams) (*dialect.JoinResult, error) {
	d.mu.Lock()
	lost := d.lostJoin
	d.lostJoin = false
	d.mu.Unlock()
	res, err := d.Dialect.Join(ctx, db, p)
	if lost && err == nil {
		d.mu.Lock()
		d.lostReq = p.RequestID
		d.mu.Unlock()
		return nil, errConnLost
	}
	return res, err
}

func (d *joinFaultDialect) Leave(ctx context.Context, db *sql.DB, m *dialect.MemberRef) (bool, error) {
	background := ctx.Value(leaveAllowed{}) == nil
	d.mu.Lock()
	fail := d.failLeave && background
	d.mu.Unlock()
	if fail {
		return false, errConnLost
	}
	left, err := d.Dialect.Leave(ctx, db, m)
	d.mu.Lock()
	if background && m.RequestID == d.lostReq && err == nil {
		d.lateLeave++
	}
	d.mu.Unlock()
	return left, err
}

// A Join whose answer was lost withdraws its request before it returns; if
// that withdrawal does not get through, it is left to the janitor. A Join
// of the same id tried again meanwhile must not be refused because of the
// client's own abandoned request (ErrMemberExists naming the client
// itself): it withdraws that request at once and joins. A second
// membership of an id the client holds is still refused, and the janitor's
// own attempt at the old request, when it finally gets through, leaves the
// new membership alone.
func TestJoinAgainWhileItsWithdrawalIsPending(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		d := &joinFaultDialect{Dialect: b.db.Dialect, lostJoin: true, failLeave: true}
		c := b.client(t, Config{Owner: "host-a", Dialect: d, ReapInterval: ReapDisabled})
		_, err := c.Join(ctx, "g", "m")
		require.ErrorIs(t, err, dialect.ErrConnection)
		v, err := c.Members(ctx, "g")
		require.NoError(t, err)
		require.Len(t, v.Members, 1, "the lost join's membership, its withdrawal pending")

		m, err := c.Join(context.WithValue(ctx, leaveAllowed{}, true), "g", "m")
		require.NoError(t, err, "refused because of the client's own withdrawn request")
		v, err = c.Members(ctx, "g")
		require.NoError(t, err)
		require.Len(t, v.Members, 1)
		require.Equal(t, m.Incarnation(), v.Members[0].Incarnation, "the member is the new join's")

		_, err = c.Join(context.WithValue(ctx, leaveAllowed{}, true), "g", "m")
		require.ErrorIs(t, err, ErrMemberExists, "a second membership of the client's own id")
		require.NoError(t, m.Err())

		d.mu.Lock()
		d.failLeave = false
		d.mu.Unlock()
		select {
		case c.janitor.kick <- struct{}{}:
		default:
		}
		require.Eventually(t, func() bool {
			d.mu.Lock()
			defer d.mu.Unlock()
			return d.lateLeave > 0
		}, 10*time.Second, 10*time.Millisecond, "the janitor's withdrawal of the lost join never ran")
		v, err = c.Members(ctx, "g")
		require.NoError(t, err)
		require.Len(t, v.Members, 1, "the janitor's late withdrawal of the old request removed the new membership")
		require.Equal(t, m.Incarnation(), v.Members[0].Incarnation)
		require.NoError(t, m.Err())
	})
}
