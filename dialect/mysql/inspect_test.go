package mysql_test

// Inspector hazards that the conformance suite does not reach on MySQL:
// poisoned session clocks, byte-exact prefixes under PAD SPACE and _ci
// collations, rows pinned by fenced transactions, upgrade order, and what
// the views show to the mysql client.

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

func (e *env) lockNames(db *sql.DB, f dialect.LocksFilter) []string {
	e.t.Helper()
	locks, err := d.Locks(e.ctx, db, &f)
	require.NoError(e.t, err)
	var names []string
	for _, l := range locks {
		names = append(names, l.Name)
	}
	return names
}

// TestInspectIgnoresSessionSettings: on a connection with a frozen SET
// timestamp (2001), autocommit off and an odd time zone, the Inspector's ages
// and expiries come from the real clock, and every call puts the time zone
// back and leaves no transaction open.
func TestInspectIgnoresSessionSettings(t *testing.T) {
	e := newEnv(t)
	poisoned, check := e.poisoned()
	a, w := e.lease(e.db.DB, "a", time.Minute), e.lease(e.db.DB, "w", time.Minute)
	tok := e.grant(e.db.DB, "n", a, dialect.Exclusive)
	require.Equal(t, dialect.Blocked, e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: w, Mode: dialect.Shared, Enqueue: true}).Status)

	locks, err := d.Locks(e.ctx, poisoned, &dialect.LocksFilter{})
	require.NoError(t, err)
	check("locks")
	require.Len(t, locks, 1)
	require.Equal(t, tok, locks[0].Token)
	require.Len(t, locks[0].Holders, 1)
	h := locks[0].Holders[0]
	require.True(t, h.Live)
	require.Equal(t, time.UTC, h.Since.Location())
	require.WithinDuration(t, time.Now(), h.Since, time.Minute)
	require.GreaterOrEqual(t, h.HeldFor, time.Duration(0))
	require.Less(t, h.HeldFor, 30*time.Second)
	require.Greater(t, h.ExpiresIn, 30*time.Second)
	require.Len(t, locks[0].Waiters, 1)
	require.WithinDuration(t, time.Now(), locks[0].Waiters[0].Since, time.Minute)
	require.Less(t, locks[0].Waiters[0].Waited, 30*time.Second)

	leases, err := d.Leases(e.ctx, poisoned)
	require.NoError(t, err)
	check("leases")
	require.Len(t, leases, 2)
	for _, l := range leases {
		require.True(t, l.Live, l.Owner)
		require.Greater(t, l.ExpiresIn, 30*time.Second)
		require.WithinDuration(t, time.Now(), l.Created, time.Minute)
		require.WithinDuration(t, time.Now(), l.Renewed, time.Minute)
	}

	broken, err := d.Break(e.ctx, poisoned, "n", "")
	require.NoError(t, err)
	check("break")
	require.Len(t, broken, 1)
	require.Equal(t, a, broken[0].ID)
	require.True(t, broken[0].Broken)
	require.False(t, broken[0].Live)
	require.Zero(t, broken[0].ExpiresIn)
	ok, err := d.RenewLease(e.ctx, e.db.DB, a)
	require.NoError(t, err)
	require.False(t, ok, "broken by the real clock, not 2001's")

	// A session whose clock is in the future does not make leases look dead.
	future := e.pool(url.Values{"timestamp": {"2000000000"}})
	leases, err = d.Leases(e.ctx, future)
	require.NoError(t, err)
	for _, l := range leases {
		require.Equal(t, l.ID != a, l.Live, l.Owner)
	}
}

// TestLocksPrefixIsByteExact: the prefix is compared byte by byte, so
// neither PAD SPACE ('a' = 'a ') nor case-insensitive collations ('a' = 'A')
// merge names, and a prefix may end inside a multi-byte character.
func TestLocksPrefixIsByteExact(t *testing.T) {
	e := newEnv(t)
	a, w := e.lease(e.db.DB, "a", time.Minute), e.lease(e.db.DB, "Owner ", time.Minute)
	for _, name := range []string{"a", "A", "a ", "é", "e", "\xff\x00z"} {
		e.grant(e.db.DB, name, a, dialect.Exclusive)
	}
	require.Equal(t, dialect.Blocked, e.acquire(e.db.DB, dialect.AcquireParams{Name: "A", LeaseID: w, Mode: dialect.Shared, Enqueue: true}).Status)
	for _, tc := range []struct {
		filter dialect.LocksFilter
		want   []string
	}{
		{dialect.LocksFilter{}, []string{"A", "a", "a ", "e", "é", "\xff\x00z"}},
		{dialect.LocksFilter{Prefix: "a"}, []string{"a", "a "}},
		{dialect.LocksFilter{Prefix: "a "}, []string{"a "}},
		{dialect.LocksFilter{Prefix: "A"}, []string{"A"}},
		{dialect.LocksFilter{Prefix: "\xc3"}, []string{"é"}},
		{dialect.LocksFilter{Prefix: "\xff\x00"}, []string{"\xff\x00z"}},
		{dialect.LocksFilter{Owner: "Owner "}, []string{"A"}},
		{dialect.LocksFilter{Owner: "Owner"}, nil},
		{dialect.LocksFilter{Owner: "owner "}, nil},
	} {
		require.Equal(t, tc.want, e.lockNames(e.db.DB, tc.filter), "%q", tc.filter)
	}
}

// TestBreakDoesNotWaitForPins: Break never waits for a row lock. A fenced
// hold (at READ COMMITTED or SERIALIZABLE: Fence locks no lease row) does not
// stop the break of its lease; a lease row that another transaction has
// locked (a DeleteLease waiting for a fenced hold) is left live and reported
// with a retryable error, next to the leases that were broken.
func TestBreakDoesNotWaitForPins(t *testing.T) {
	e := newEnv(t)
	f, s, c := e.lease(e.db.DB, "f", time.Minute), e.lease(e.db.DB, "s", time.Minute), e.lease(e.db.DB, "c", time.Minute)
	tf := e.grant(e.db.DB, "n", f, dialect.Shared)
	ts := e.grant(e.db.DB, "n", s, dialect.Shared)

	fenced, err := e.db.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer fenced.Rollback()
	ok, err := d.Fence(e.ctx, e.db.DB, fenced, &dialect.HoldRef{Name: "n", LeaseID: f, Token: tf}, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	serial, err := e.db.BeginTx(e.ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
	require.NoError(t, err)
	defer serial.Rollback()
	ok, err = d.Fence(e.ctx, e.db.DB, serial, &dialect.HoldRef{Name: "n", LeaseID: s, Token: ts}, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)

	// Fence locks only the hold, at SERIALIZABLE too (schema version 4's
	// fence share-locked the lease row there): both leases are broken.
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	broken, err := d.Break(ctx, e.db.DB, "n", "")
	require.NoError(t, err)
	require.Len(t, broken, 2)
	leases, err := d.Leases(ctx, e.db.DB)
	require.NoError(t, err)
	for _, l := range leases {
		require.Equal(t, l.ID == c, l.Live, l.Owner)
	}

	// The fenced holds outlive the break: no takeover until the fences end.
	res := e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Blocked, res.Status)
	require.NoError(t, fenced.Commit())
	res = e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Blocked, res.Status)
	require.NoError(t, serial.Commit())
	e.grant(e.db.DB, "n", c, dialect.Exclusive)

	// A DeleteLease waiting for a fenced hold keeps its lease row locked
	// meanwhile; a transaction that holds the row does the same here, without
	// a wait that the test would have to detect (information_schema.innodb_trx
	// is a cache that polling keeps from refreshing).
	pin, err := e.db.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer pin.Rollback()
	var n int
	require.NoError(t, pin.QueryRowContext(e.ctx, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? FOR UPDATE`, c).Scan(&n))
	broken, err = d.Break(ctx, e.db.DB, "n", "")
	require.ErrorIs(t, err, dialect.ErrLockTimeout)
	require.Empty(t, broken)
	_, err = pin.ExecContext(e.ctx, `DELETE FROM sqldlm_holders WHERE lease_id = ?`, c)
	require.NoError(t, err)
	_, err = pin.ExecContext(e.ctx, `DELETE FROM sqldlm_leases WHERE id = ?`, c)
	require.NoError(t, err)
	require.NoError(t, pin.Commit())
	broken, err = d.Break(ctx, e.db.DB, "n", "")
	require.NoError(t, err)
	require.Empty(t, broken, "deleted meanwhile")
}

// TestUpgradeWaitsFirst: a pending upgrade is first in line in Locks and in
// sqldlm_waiters_view, ahead of earlier waiters.
func TestUpgradeWaitsFirst(t *testing.T) {
	e := newEnv(t)
	s1, s2, x := e.lease(e.db.DB, "s1", time.Minute), e.lease(e.db.DB, "s2", time.Minute), e.lease(e.db.DB, "x", time.Minute)
	t1 := e.grant(e.db.DB, "n", s1, dialect.Shared)
	e.grant(e.db.DB, "n", s2, dialect.Shared)
	require.Equal(t, dialect.Blocked, e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: x, Mode: dialect.Exclusive, Enqueue: true}).Status)
	up := e.acquire(e.db.DB, dialect.AcquireParams{Name: "n", LeaseID: s1, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: t1})
	require.Equal(t, dialect.Blocked, up.Status)

	locks, err := d.Locks(e.ctx, e.db.DB, &dialect.LocksFilter{Prefix: "n"})
	require.NoError(t, err)
	require.Len(t, locks, 1)
	ws := locks[0].Waiters
	require.Len(t, ws, 2)
	require.Equal(t, dialect.WaiterState{Owner: "s1", LeaseID: s1, Mode: dialect.Exclusive, Upgrade: true, Position: 1},
		dialect.WaiterState{Owner: ws[0].Owner, LeaseID: ws[0].LeaseID, Mode: ws[0].Mode, Upgrade: ws[0].Upgrade, Position: ws[0].Position})
	require.Equal(t, "x", ws[1].Owner)
	require.False(t, ws[1].Upgrade)
	require.Equal(t, 2, ws[1].Position)

	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_waiters_view WHERE owner = 's1' AND upgrade AND position = 1`))
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_waiters_view WHERE owner = 'x' AND NOT upgrade AND position = 2`))
}

// TestViewsShowTextInUTC: the views show names and owners as text and times
// in UTC, whatever the session's time zone; dead leases' waiters are hidden.
func TestViewsShowTextInUTC(t *testing.T) {
	e := newEnv(t)
	a, w := e.lease(e.db.DB, "owner-a", time.Minute), e.lease(e.db.DB, "owner-w", time.Minute)
	e.grant(e.db.DB, "name/1", a, dialect.Exclusive)
	// Created right before its one use, with room for a loaded machine; it
	// queues before owner-w, whose position must not count it once dead.
	const ttl = 500 * time.Millisecond
	dead := e.lease(e.db.DB, "owner-dead", ttl)
	require.Equal(t, dialect.Blocked, e.acquire(e.db.DB, dialect.AcquireParams{Name: "name/1", LeaseID: dead, Mode: dialect.Shared, Enqueue: true}).Status)
	require.Equal(t, dialect.Blocked, e.acquire(e.db.DB, dialect.AcquireParams{Name: "name/1", LeaseID: w, Mode: dialect.Shared, Enqueue: true}).Status)
	e.expire(ttl)
	east := e.pool(url.Values{"time_zone": {"'+05:00'"}})

	rows, err := east.QueryContext(e.ctx, `SELECT name, owner, acquired_at, held_seconds, expires_in_seconds, live FROM sqldlm_holders_view`)
	require.NoError(t, err)
	defer rows.Close()
	types, err := rows.ColumnTypes()
	require.NoError(t, err)
	require.Equal(t, "VARCHAR", types[0].DatabaseTypeName(), "name is text")
	require.Equal(t, "VARCHAR", types[1].DatabaseTypeName(), "owner is text")
	require.Equal(t, "DATETIME", types[2].DatabaseTypeName())
	require.True(t, rows.Next())
	var name, owner, acquired string
	var held, expiresIn float64
	var live bool
	require.NoError(t, rows.Scan(&name, &owner, &acquired, &held, &expiresIn, &live))
	require.False(t, rows.Next())
	require.NoError(t, rows.Err())
	require.Equal(t, "name/1", name)
	require.Equal(t, "owner-a", owner)
	at, err := time.Parse("2006-01-02 15:04:05.999999", acquired)
	require.NoError(t, err)
	require.WithinDuration(t, time.Now(), at, time.Minute, "UTC, not +05:00")
	require.GreaterOrEqual(t, held, 0.1)
	require.Less(t, held, 30.0)
	require.Greater(t, expiresIn, 30.0)
	require.True(t, live)

	require.Equal(t, 1, e.count(east, `SELECT COUNT(*) FROM sqldlm_waiters_view`), "the dead lease's waiter is hidden")
	require.Equal(t, 1, e.count(east, `SELECT COUNT(*) FROM sqldlm_waiters_view WHERE owner = 'owner-w' AND position = 1`))
	require.Equal(t, 1, e.count(east, `SELECT COUNT(*) FROM sqldlm_leases_view WHERE owner = 'owner-dead' AND NOT live AND NOT broken AND waits = 1 AND expires_in_seconds < 0`))
	require.Equal(t, 1, e.count(east, `SELECT COUNT(*) FROM sqldlm_leases_view
		WHERE owner = 'owner-a' AND live AND holds = 1 AND waits = 0 AND ABS(TIMESTAMPDIFF(SECOND, created_at, UTC_TIMESTAMP())) < 60`))
}

// TestHoldersViewShowsPayload: the holders view shows the payload as text.
func TestHoldersViewShowsPayload(t *testing.T) {
	e := newEnv(t)
	a := e.lease(e.db.DB, "a", time.Minute)
	res := e.acquire(e.db.DB, dialect.AcquireParams{Name: "vol/1", LeaseID: a, Mode: dialect.Exclusive, Payload: "résumé ✓"})
	require.Equal(t, dialect.Granted, res.Status)
	rows, err := e.db.QueryContext(e.ctx, `SELECT payload FROM sqldlm_holders_view WHERE lease_id = ?`, a)
	require.NoError(t, err)
	defer rows.Close()
	types, err := rows.ColumnTypes()
	require.NoError(t, err)
	require.Equal(t, "VARCHAR", types[0].DatabaseTypeName(), "payload is text")
	require.True(t, rows.Next())
	var payload string
	require.NoError(t, rows.Scan(&payload))
	require.NoError(t, rows.Err())
	require.Equal(t, "résumé ✓", payload)
}
