package postgres_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// ReleaseHandOver grants the name to the head of the queue in the releasing
// transaction, with the payload the waiter queued with, and notifies it with
// the grant's token; its next Acquire returns that hold too. Shared waiters
// at the head are granted together, up to the first exclusive one; a
// withdrawn waiter loses the hold it was handed; waiters of dead leases are
// passed over; nothing is handed over while a conflicting hold remains, nor
// to a pending upgrade.
func TestReleaseHandOver(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	n := d.(dialect.Notifier)
	db := testdb.OpenMigrated(t, testdb.Postgres)
	l := listen(t, testdb.Reopen(t, db.Kind, db.DSN).DB)

	type req struct{ lease, id int64 }
	newReq := func() req {
		id := rand.Int64()
		require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: id, Owner: "o", TTL: time.Minute}))
		return req{id, rand.Int64()}
	}
	acquire := func(name string, r req, mode dialect.Mode, payload string) *dialect.AcquireResult {
		t.Helper()
		res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: r.lease, RequestID: r.id, Mode: mode,
			Enqueue: true, Payload: payload})
		require.NoError(t, err)
		return res
	}
	holds := func(name string) map[int64]string { // lease -> payload
		t.Helper()
		rows, err := db.QueryContext(ctx, `SELECT lease_id, payload FROM sqldlm_holds WHERE name = $1`, name)
		require.NoError(t, err)
		defer rows.Close()
		out := map[int64]string{}
		for rows.Next() {
			var id int64
			var p string
			require.NoError(t, rows.Scan(&id, &p))
			out[id] = p
		}
		require.NoError(t, rows.Err())
		return out
	}
	nameToken := func(name string) int64 {
		t.Helper()
		var tok int64
		require.NoError(t, db.QueryRowContext(ctx, `SELECT token FROM sqldlm_locks WHERE name = $1`, name).Scan(&tok))
		return tok
	}
	handOver := func(name string, r req, token int64) {
		t.Helper()
		ok, err := n.ReleaseHandOver(ctx, db.DB, &dialect.HoldRef{Name: name, LeaseID: r.lease, Token: token})
		require.NoError(t, err)
		require.True(t, ok)
	}

	// Exclusive: the head gets the hold; the one behind it still waits.
	h, w1, w2 := newReq(), newReq(), newReq()
	tok := acquire("x", h, dialect.Exclusive, "").Token
	require.Equal(t, dialect.Blocked, acquire("x", w1, dialect.Exclusive, "w1 works").Status)
	require.Equal(t, dialect.Blocked, acquire("x", w2, dialect.Exclusive, "").Status)
	handOver("x", h, tok)
	require.Equal(t, map[int64]string{w1.lease: "w1 works"}, holds("x"), "handed over, with the waiter's payload")
	woke := l.next(t)
	got := acquire("x", w1, dialect.Exclusive, "w1 works")
	require.Equal(t, dialect.Granted, got.Status)
	require.Greater(t, got.Token, tok)
	require.Equal(t, dialect.Wakeup{Name: "x", LeaseID: w1.lease, RequestID: w1.id, Token: got.Token}, woke,
		"the notification carries the grant")
	require.Equal(t, got.Token, nameToken("x"), "the name's token is the grant's")
	require.Equal(t, dialect.Blocked, acquire("x", w2, dialect.Exclusive, "").Status)

	// A waiter withdrawn after the handover loses the hold with its row.
	handOver("x", w1, got.Token)
	woke = l.next(t)
	require.Equal(t, dialect.Wakeup{Name: "x", LeaseID: w2.lease, RequestID: w2.id, Token: nameToken("x")}, woke)
	res, err := d.Abandon(ctx, db.DB, &dialect.AbandonParams{Name: "x", LeaseID: w2.lease, RequestID: w2.id})
	require.NoError(t, err)
	require.Equal(t, []string{"x"}, res.Freed)
	require.Empty(t, holds("x"))
	var waiting int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM sqldlm_waiters`).Scan(&waiting))
	require.Zero(t, waiting)

	// Shared: the shared waiters at the head, up to the exclusive one.
	h = newReq()
	tok = acquire("s", h, dialect.Exclusive, "").Token
	s1, s2, x3, s4 := newReq(), newReq(), newReq(), newReq()
	acquire("s", s1, dialect.Shared, "")
	acquire("s", s2, dialect.Shared, "")
	acquire("s", x3, dialect.Exclusive, "")
	acquire("s", s4, dialect.Shared, "")
	handOver("s", h, tok)
	require.Equal(t, map[int64]string{s1.lease: "", s2.lease: ""}, holds("s"))
	woken := []dialect.Wakeup{l.next(t), l.next(t)}
	s1tok := acquire("s", s1, dialect.Shared, "").Token
	s2tok := acquire("s", s2, dialect.Shared, "").Token
	require.Less(t, s1tok, s2tok, "granted in queue order")
	require.ElementsMatch(t, []dialect.Wakeup{{Name: "s", LeaseID: s1.lease, RequestID: s1.id, Token: s1tok},
		{Name: "s", LeaseID: s2.lease, RequestID: s2.id, Token: s2tok}}, woken)

	// A conflicting hold remains (the other shared holder): nothing is
	// handed over to the exclusive head, which is only woken.
	handOver("s", s1, s1tok)
	require.Equal(t, map[int64]string{s2.lease: ""}, holds("s"))
	require.Equal(t, dialect.Wakeup{Name: "s", LeaseID: x3.lease, RequestID: x3.id}, l.next(t),
		"not handed over: the head is only woken")
	require.Equal(t, dialect.Blocked, acquire("s", x3, dialect.Exclusive, "").Status)

	// The head's lease has expired: it is passed over, and the next live
	// waiter gets the name.
	h = newReq()
	tok = acquire("d", h, dialect.Exclusive, "").Token
	dead, live := newReq(), newReq()
	acquire("d", dead, dialect.Exclusive, "")
	acquire("d", live, dialect.Exclusive, "")
	_, err = db.ExecContext(ctx, `UPDATE sqldlm_leases SET expires_at = clock_timestamp() - interval '1 second' WHERE id = $1`, dead.lease)
	require.NoError(t, err)
	handOver("d", h, tok)
	require.Equal(t, map[int64]string{live.lease: ""}, holds("d"))
	require.Equal(t, dialect.Wakeup{Name: "d", LeaseID: live.lease, RequestID: live.id, Token: nameToken("d")}, l.next(t))

	// A pending upgrade is at the head: it is woken (its own acquire
	// upgrades), not handed the name.
	a, b := newReq(), newReq()
	atok := acquire("u", a, dialect.Shared, "").Token
	btok := acquire("u", b, dialect.Shared, "").Token
	x := newReq()
	require.Equal(t, dialect.Blocked, acquire("u", x, dialect.Exclusive, "").Status)
	up, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "u", LeaseID: a.lease, RequestID: rand.Int64(),
		Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: atok})
	require.NoError(t, err)
	require.Equal(t, dialect.Blocked, up.Status)
	handOver("u", b, btok)
	require.Equal(t, map[int64]string{a.lease: ""}, holds("u"), "nothing handed over")
	woke = l.next(t)
	require.Equal(t, a.lease, woke.LeaseID, "the upgrade is woken")
	require.Zero(t, woke.Token, "with no grant")
}
