package postgres_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/schemadump"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

func (f *fixture) setAudit(enabled bool, retention time.Duration) {
	f.t.Helper()
	require.NoError(f.t, f.d.SetAuditSettings(f.ctx, f.db.DB, &dialect.AuditSettings{Enabled: enabled, Retention: retention}))
}

func (f *fixture) auditLog(filter dialect.AuditFilter) []dialect.AuditEntry {
	f.t.Helper()
	log, err := f.d.AuditLog(f.ctx, f.db.DB, &filter)
	require.NoError(f.t, err)
	return log
}

// auditRow is an audit entry without its ID and time.
type auditRow struct {
	Event   dialect.AuditEvent
	Name    string
	Owner   string
	LeaseID int64
	Token   int64
	Mode    dialect.Mode
	Payload string
	Detail  string
}

func auditRows(log []dialect.AuditEntry) []auditRow {
	out := make([]auditRow, len(log))
	for i, e := range log {
		out[i] = auditRow{e.Event, e.Name, e.Owner, e.LeaseID, e.Token, e.Mode, e.Payload, e.Detail}
	}
	return out
}

// Every function that changes holds writes its rows, with the exact
// details, and the functions that change none write nothing.
func TestAuditRowsOfEachEvent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.setAudit(true, time.Hour)
	before, err := f.d.Now(f.ctx, f.db.DB)
	require.NoError(t, err)
	X, S := dialect.Exclusive, dialect.Shared
	alice, bob := f.lease("alice", time.Minute), f.lease("bob", time.Minute)
	var want []auditRow

	// Grant; a repeat, a refusal and a queued request write nothing.
	req := rand.Int64()
	g := f.acquire(dialect.AcquireParams{Name: "g", LeaseID: alice, RequestID: req, Mode: X, Payload: "first"})
	require.Equal(t, dialect.Granted, g.Status)
	require.Equal(t, g.Token, f.acquire(dialect.AcquireParams{Name: "g", LeaseID: alice, RequestID: req, Mode: X}).Token)
	require.Equal(t, dialect.Blocked, f.acquire(dialect.AcquireParams{Name: "g", LeaseID: bob, Mode: S}).Status)
	waitReq := rand.Int64()
	require.Equal(t, dialect.Blocked, f.acquire(dialect.AcquireParams{Name: "g", LeaseID: bob, RequestID: waitReq, Mode: S, Enqueue: true}).Status)
	want = append(want, auditRow{dialect.AuditGrant, "g", "alice", alice, g.Token, X, "first", ""})
	// Abandoning a request that only waits deletes no hold.
	_, err = f.d.Abandon(f.ctx, f.db.DB, &dialect.AbandonParams{Name: "g", LeaseID: bob, RequestID: waitReq})
	require.NoError(t, err)
	// Release.
	ok, err := f.d.Release(f.ctx, f.db.DB, &dialect.HoldRef{Name: "g", LeaseID: alice, Token: g.Token})
	require.NoError(t, err)
	require.True(t, ok)
	want = append(want, auditRow{dialect.AuditRelease, "g", "alice", alice, g.Token, X, "first", ""})
	ok, err = f.d.Release(f.ctx, f.db.DB, &dialect.HoldRef{Name: "g", LeaseID: alice, Token: g.Token})
	require.NoError(t, err)
	require.False(t, ok, "released already: no row")

	// An upgrade that takes a dead shared holder over: the takeover row
	// first, then the upgrade's, which keeps the shared hold's payload.
	carol := f.lease("carol", 300*time.Millisecond)
	cs := f.acquire(dialect.AcquireParams{Name: "u", LeaseID: carol, Mode: S, Payload: "reading"}).Token
	as := f.acquire(dialect.AcquireParams{Name: "u", LeaseID: alice, Mode: S, Payload: "shared"}).Token
	f.expire(carol)
	up := f.acquire(dialect.AcquireParams{Name: "u", LeaseID: alice, Mode: X, UpgradeToken: as})
	require.Equal(t, dialect.Granted, up.Status)
	want = append(want,
		auditRow{dialect.AuditGrant, "u", "carol", carol, cs, S, "reading", ""},
		auditRow{dialect.AuditGrant, "u", "alice", alice, as, S, "shared", ""},
		auditRow{dialect.AuditTakeover, "u", "carol", carol, cs, S, "reading", "by alice"},
		auditRow{dialect.AuditUpgrade, "u", "alice", alice, up.Token, X, "shared", fmt.Sprintf("from token %d", as)})
	// Downgrade.
	ok, err = f.d.Downgrade(f.ctx, f.db.DB, &dialect.HoldRef{Name: "u", LeaseID: alice, Token: up.Token})
	require.NoError(t, err)
	require.True(t, ok)
	want = append(want, auditRow{dialect.AuditDowngrade, "u", "alice", alice, up.Token, S, "shared", ""})

	// A takeover of a hold whose lease row is gone: owner ''.
	ghost := rand.Int64()
	var gt int64
	require.NoError(t, f.db.QueryRowContext(f.ctx, `INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
		VALUES ('orphan', $1, 1, 'X', clock_timestamp(), 'left over') RETURNING token`, ghost).Scan(&gt))
	bt := f.grant("orphan", bob, X)
	want = append(want,
		auditRow{dialect.AuditTakeover, "orphan", "", ghost, gt, X, "left over", "by bob"},
		auditRow{dialect.AuditGrant, "orphan", "bob", bob, bt, X, "", ""})

	// Abandon of a granted request.
	req = rand.Int64()
	ab := f.acquire(dialect.AcquireParams{Name: "ab", LeaseID: alice, RequestID: req, Mode: X})
	_, err = f.d.Abandon(f.ctx, f.db.DB, &dialect.AbandonParams{Name: "ab", LeaseID: alice, RequestID: req})
	require.NoError(t, err)
	want = append(want,
		auditRow{dialect.AuditGrant, "ab", "alice", alice, ab.Token, X, "", ""},
		auditRow{dialect.AuditRelease, "ab", "alice", alice, ab.Token, X, "", "abandoned"})

	// ReleaseTx: nothing if rolled back, its row with the commit.
	rt := f.grant("rt", alice, X)
	want = append(want, auditRow{dialect.AuditGrant, "rt", "alice", alice, rt, X, "", ""})
	for _, commit := range []bool{false, true} {
		tx := f.begin(f.db.DB, sql.LevelReadCommitted)
		ok, err := f.d.ReleaseTx(f.ctx, f.db.DB, tx, &dialect.HoldRef{Name: "rt", LeaseID: alice, Token: rt})
		require.NoError(t, err)
		require.True(t, ok)
		if commit {
			require.NoError(t, tx.Commit())
		} else {
			require.NoError(t, tx.Rollback())
		}
	}
	want = append(want, auditRow{dialect.AuditRelease, "rt", "alice", alice, rt, X, "", ""})

	// AcquireTx: nothing if rolled back; with a takeover, its rows with the
	// commit.
	dan := f.lease("dan", 300*time.Millisecond)
	dt := f.grant("tx", dan, X)
	want = append(want, auditRow{dialect.AuditGrant, "tx", "dan", dan, dt, X, "", ""})
	f.expire(dan)
	var txToken int64
	for _, commit := range []bool{false, true} {
		tx := f.begin(f.db.DB, sql.LevelReadCommitted)
		res := f.acquireTx(tx, dialect.AcquireParams{Name: "tx", LeaseID: alice, Mode: X, Payload: "in tx"})
		require.Equal(t, dialect.Granted, res.Status)
		if commit {
			require.NoError(t, tx.Commit())
			txToken = res.Token
			want = append(want,
				auditRow{dialect.AuditTakeover, "tx", "dan", dan, dt, X, "", "by alice"},
				auditRow{dialect.AuditGrant, "tx", "alice", alice, txToken, X, "in tx", ""})
		} else {
			require.NoError(t, tx.Rollback())
		}
	}

	// Break, of one owner's leases only: '' for the broken name, 'with
	// <name>' for the lease's other holds; erin's hold stays unbroken.
	erin, frank := f.lease("erin", time.Minute), f.lease("frank", time.Minute)
	es := f.grant("b", erin, S)
	fs, fx := f.grant("b", frank, S), f.grant("b2", frank, X)
	broken, err := f.d.Break(f.ctx, f.db.DB, "b", "frank")
	require.NoError(t, err)
	require.Len(t, broken, 1)
	want = append(want,
		auditRow{dialect.AuditGrant, "b", "erin", erin, es, S, "", ""},
		auditRow{dialect.AuditGrant, "b", "frank", frank, fs, S, "", ""},
		auditRow{dialect.AuditGrant, "b2", "frank", frank, fx, X, "", ""},
		auditRow{dialect.AuditBreak, "b", "frank", frank, fs, S, "", ""},
		auditRow{dialect.AuditBreak, "b2", "frank", frank, fx, X, "", "with b"})
	broken, err = f.d.Break(f.ctx, f.db.DB, "b", "frank")
	require.NoError(t, err)
	require.Empty(t, broken, "broken already: no rows")

	// Reap: an expire row for each hold of the dead leases (frank's).
	res, err := f.d.Reap(f.ctx, f.db.DB, 100, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 2, res.Holds)
	want = append(want,
		auditRow{dialect.AuditExpire, "b", "frank", frank, fs, S, "", ""},
		auditRow{dialect.AuditExpire, "b2", "frank", frank, fx, X, "", ""})

	// DeleteLease: a 'lease closed' row for each hold.
	_, err = f.d.DeleteLease(f.ctx, f.db.DB, alice)
	require.NoError(t, err)
	want = append(want,
		auditRow{dialect.AuditRelease, "u", "alice", alice, up.Token, S, "shared", "lease closed"},
		auditRow{dialect.AuditRelease, "tx", "alice", alice, txToken, X, "in tx", "lease closed"})

	// SetPayload and RenewLease change no hold.
	ok, err = f.d.SetPayload(f.ctx, f.db.DB, &dialect.HoldRef{Name: "b", LeaseID: erin, Token: es}, "new")
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = f.d.RenewLease(f.ctx, f.db.DB, erin)
	require.NoError(t, err)
	require.True(t, ok)

	log := f.auditLog(dialect.AuditFilter{})
	require.Equal(t, want, auditRows(log))
	after, err := f.d.Now(f.ctx, f.db.DB)
	require.NoError(t, err)
	for i, e := range log {
		require.Equal(t, time.UTC, e.At.Location())
		require.False(t, e.At.Before(before), "row %d", i)
		require.False(t, e.At.After(after), "row %d", i)
		if i > 0 {
			require.Greater(t, e.ID, log[i-1].ID)
			require.False(t, e.At.Before(log[i-1].At), "row %d", i)
		}
	}

	// Filters: by name, newest first, within a time.
	require.Equal(t, []dialect.AuditEvent{dialect.AuditBreak, dialect.AuditExpire},
		eventsOf(f.auditLog(dialect.AuditFilter{Name: "b2", Limit: 2})))
	require.Empty(t, f.auditLog(dialect.AuditFilter{Name: "b\xff"}), "a name PostgreSQL cannot store")
	require.Len(t, f.auditLog(dialect.AuditFilter{Since: time.Hour}), len(want))
	require.Len(t, f.auditLog(dialect.AuditFilter{Limit: 3, Since: time.Hour}), 3)
	_, err = f.db.ExecContext(f.ctx, `UPDATE sqldlm_audit SET at = at - interval '10 minutes' WHERE name <> 'b2'`)
	require.NoError(t, err)
	require.Equal(t, []dialect.AuditEvent{dialect.AuditGrant, dialect.AuditBreak, dialect.AuditExpire},
		eventsOf(f.auditLog(dialect.AuditFilter{Since: 5 * time.Minute})))
}

func eventsOf(log []dialect.AuditEntry) []dialect.AuditEvent {
	out := make([]dialect.AuditEvent, len(log))
	for i, e := range log {
		out[i] = e.Event
	}
	return out
}

// With audit disabled (as migrated), no function writes a row; enabling it
// takes effect at once.
func TestAuditDisabledWritesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s, err := f.d.AuditSettings(f.ctx, f.db.DB)
	require.NoError(t, err)
	require.Equal(t, dialect.AuditSettings{Enabled: false, Retention: 7 * 24 * time.Hour}, *s)
	X, S := dialect.Exclusive, dialect.Shared
	a, c := f.lease("a", time.Minute), f.lease("c", time.Minute)

	tok := f.grant("n", a, X)
	_, err = f.d.Release(f.ctx, f.db.DB, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok})
	require.NoError(t, err)
	dead := f.lease("dead", 300*time.Millisecond)
	ds := f.grant("u", dead, S)
	as := f.grant("u", a, S)
	f.expire(dead)
	up := f.acquire(dialect.AcquireParams{Name: "u", LeaseID: a, Mode: X, UpgradeToken: as})
	require.Equal(t, dialect.Granted, up.Status)
	require.Len(t, up.TookOver, 1)
	require.Equal(t, ds, up.TookOver[0].Token)
	_, err = f.d.Downgrade(f.ctx, f.db.DB, &dialect.HoldRef{Name: "u", LeaseID: a, Token: up.Token})
	require.NoError(t, err)
	req := rand.Int64()
	f.acquire(dialect.AcquireParams{Name: "ab", LeaseID: a, RequestID: req, Mode: X})
	_, err = f.d.Abandon(f.ctx, f.db.DB, &dialect.AbandonParams{Name: "ab", LeaseID: a, RequestID: req})
	require.NoError(t, err)
	tx := f.begin(f.db.DB, sql.LevelReadCommitted)
	res := f.acquireTx(tx, dialect.AcquireParams{Name: "tx", LeaseID: a, Mode: X})
	require.Equal(t, dialect.Granted, res.Status)
	_, err = f.d.ReleaseTx(f.ctx, f.db.DB, tx, &dialect.HoldRef{Name: "tx", LeaseID: a, Token: res.Token})
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	f.grant("b", c, X)
	_, err = f.d.Break(f.ctx, f.db.DB, "b", "")
	require.NoError(t, err)
	reaped, err := f.d.Reap(f.ctx, f.db.DB, 100, 0)
	require.NoError(t, err)
	require.Equal(t, 1, reaped.Holds)
	_, err = f.d.DeleteLease(f.ctx, f.db.DB, a)
	require.NoError(t, err)
	require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_audit`))

	e := f.lease("e", time.Minute)
	f.setAudit(true, time.Hour)
	tok = f.grant("n", e, X)
	f.setAudit(false, time.Hour)
	_, err = f.d.Release(f.ctx, f.db.DB, &dialect.HoldRef{Name: "n", LeaseID: e, Token: tok})
	require.NoError(t, err)
	require.Equal(t, []dialect.AuditEvent{dialect.AuditGrant}, eventsOf(f.auditLog(dialect.AuditFilter{})))
}

// Reap deletes up to its limit of the rows older than the retention, oldest
// first, whether or not audit is on, and counts them.
func TestReapPrunesAuditRowsPastRetention(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.setAudit(true, time.Minute)
	a := f.lease("a", time.Minute)
	for range 3 {
		tok := f.grant("n", a, dialect.Exclusive)
		_, err := f.d.Release(f.ctx, f.db.DB, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok})
		require.NoError(t, err)
	}
	log := f.auditLog(dialect.AuditFilter{})
	require.Len(t, log, 6)
	// The first five are past the retention.
	_, err := f.db.ExecContext(f.ctx, `UPDATE sqldlm_audit SET at = at - interval '61 seconds' WHERE id < $1`, log[5].ID)
	require.NoError(t, err)

	res, err := f.d.Reap(f.ctx, f.db.DB, 3, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 3, res.AuditRows)
	require.Equal(t, []int64{log[3].ID, log[4].ID, log[5].ID}, idsOf(f.auditLog(dialect.AuditFilter{})), "oldest first")

	f.setAudit(false, time.Minute)
	res, err = f.d.Reap(f.ctx, f.db.DB, 3, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 2, res.AuditRows, "pruned with audit off too")
	require.Equal(t, []int64{log[5].ID}, idsOf(f.auditLog(dialect.AuditFilter{})), "rows within the retention stay")
	res, err = f.d.Reap(f.ctx, f.db.DB, 3, time.Hour)
	require.NoError(t, err)
	require.Zero(t, res.AuditRows)

	// A shorter retention applies at the next pass.
	_, err = f.db.ExecContext(f.ctx, `UPDATE sqldlm_audit SET at = at - interval '2 seconds'`)
	require.NoError(t, err)
	f.setAudit(false, time.Second)
	res, err = f.d.Reap(f.ctx, f.db.DB, 3, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, res.AuditRows)
	require.Empty(t, f.auditLog(dialect.AuditFilter{}))
}

func idsOf(log []dialect.AuditEntry) []int64 {
	out := make([]int64, len(log))
	for i, e := range log {
		out[i] = e.ID
	}
	return out
}

func TestSetAuditSettingsValidates(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	err := f.d.SetAuditSettings(f.ctx, f.db.DB, &dialect.AuditSettings{Enabled: true, Retention: 999 * time.Millisecond})
	require.ErrorContains(t, err, "retention")
	f.setAudit(true, time.Second)
	s, err := f.d.AuditSettings(f.ctx, f.db.DB)
	require.NoError(t, err)
	require.Equal(t, dialect.AuditSettings{Enabled: true, Retention: time.Second}, *s)
}

// Down from version 3 restores version 2's functions exactly (as a schema
// migrated only to version 2 has them), and drops what version 3 added.
func TestMigrationDownRestoresVersion2(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.Open(t, testdb.Postgres)
	p, err := migrations.NewProvider(db.DB, d)
	require.NoError(t, err)

	catalog := func() map[string]string { return schemaCatalog(ctx, t, db.DB) }
	_, err = p.UpTo(ctx, 2)
	require.NoError(t, err)
	v2 := catalog()
	require.Contains(t, v2, "function sqldlm_reap(integer,bigint)")
	require.NotContains(t, v2, "relation sqldlm_audit")

	_, err = p.Up(ctx)
	require.NoError(t, err)
	v3 := catalog()
	const acquire = "function sqldlm_acquire(text,bigint,bigint,text,boolean,bigint,text,bigint)"
	require.NotEqual(t, v2[acquire], v3[acquire])
	require.Contains(t, v3, "function sqldlm_acquire_tx(text,bigint,bigint,text,text,bigint)")
	require.Contains(t, v3, "relation sqldlm_pending")

	_, err = p.DownTo(ctx, 2)
	require.NoError(t, err)
	require.Equal(t, v2, catalog())
}

// schemaCatalog returns the functions of db's current schema by signature
// ("function name(types)", with pg_get_functiondef's text) and its tables
// and views by name ("relation name"), as schemadump renders them: columns,
// constraints, indexes and triggers.
func schemaCatalog(ctx context.Context, t *testing.T, db *sql.DB) map[string]string {
	t.Helper()
	rows, err := db.QueryContext(ctx, `
		SELECT 'function ' || p.oid::regprocedure::text, pg_get_functiondef(p.oid)
		  FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace`)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		require.NoError(t, rows.Scan(&k, &v))
		out[k] = v
	}
	require.NoError(t, rows.Err())
	objects, err := schemadump.PostgresObjects(ctx, db)
	require.NoError(t, err)
	for name, def := range objects {
		if !strings.HasPrefix(def, "CREATE OR REPLACE FUNCTION") {
			out["relation "+name] = def
		}
	}
	return out
}

// Down from version 4 restores version 3's functions exactly (as a schema
// migrated only to version 3 has them), and drops sqldlm_wake.
func TestMigrationDownRestoresVersion3(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.Open(t, testdb.Postgres)
	p, err := migrations.NewProvider(db.DB, d)
	require.NoError(t, err)

	_, err = p.UpTo(ctx, 3)
	require.NoError(t, err)
	v3 := schemaCatalog(ctx, t, db.DB)
	require.NotContains(t, v3, "function sqldlm_wake(text)")

	_, err = p.UpTo(ctx, 4)
	require.NoError(t, err)
	v4 := schemaCatalog(ctx, t, db.DB)
	require.Contains(t, v4, "function sqldlm_wake(text)")
	require.Contains(t, v4, "function sqldlm_release_next(text,bigint,bigint)")
	for _, fn := range []string{"sqldlm_acquire(text,bigint,bigint,text,boolean,bigint,text,bigint)",
		"sqldlm_release(text,bigint,bigint)", "sqldlm_abandon(bigint,bigint)", "sqldlm_downgrade(text,bigint,bigint)",
		"sqldlm_delete_lease(bigint)", "sqldlm_reap(integer,bigint)", "sqldlm_break(text,text)"} {
		require.Contains(t, v3, "function "+fn)
		require.NotEqual(t, v3["function "+fn], v4["function "+fn], fn)
	}

	_, err = p.DownTo(ctx, 3)
	require.NoError(t, err)
	require.Equal(t, v3, schemaCatalog(ctx, t, db.DB))
}

// Down from version 5 restores version 4's sqldlm_release_next exactly.
func TestMigrationDownRestoresVersion4(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := testdb.Open(t, testdb.Postgres)
	p, err := migrations.NewProvider(db.DB, postgres.Dialect())
	require.NoError(t, err)

	_, err = p.UpTo(ctx, 4)
	require.NoError(t, err)
	v4 := schemaCatalog(ctx, t, db.DB)
	_, err = p.UpTo(ctx, 5)
	require.NoError(t, err)
	v5 := schemaCatalog(ctx, t, db.DB)
	const fn = "function sqldlm_release_next(text,bigint,bigint)"
	require.Contains(t, v4, fn)
	require.NotEqual(t, v4[fn], v5[fn])

	_, err = p.DownTo(ctx, 4)
	require.NoError(t, err)
	require.Equal(t, v4, schemaCatalog(ctx, t, db.DB))
}

// Down from version 6 restores version 5 exactly: the new sqldlm_abandon
// and sqldlm_withdrawn are dropped, and sqldlm_acquire, sqldlm_delete_lease
// and sqldlm_reap are as version 5 has them; version 5's sqldlm_abandon
// was kept as it was.
func TestMigrationDownRestoresVersion5(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := testdb.Open(t, testdb.Postgres)
	p, err := migrations.NewProvider(db.DB, postgres.Dialect())
	require.NoError(t, err)

	_, err = p.UpTo(ctx, 5)
	require.NoError(t, err)
	v5 := schemaCatalog(ctx, t, db.DB)
	_, err = p.UpTo(ctx, 6)
	require.NoError(t, err)
	v6 := schemaCatalog(ctx, t, db.DB)
	require.NotContains(t, v5, "relation sqldlm_withdrawn")
	require.Contains(t, v6, "relation sqldlm_withdrawn")
	require.Contains(t, v6, "function sqldlm_abandon(text,bigint,bigint,boolean)")
	const old = "function sqldlm_abandon(bigint,bigint)"
	require.Contains(t, v5, old)
	require.Equal(t, v5[old], v6[old])
	for _, fn := range []string{"sqldlm_acquire(text,bigint,bigint,text,boolean,bigint,text,bigint)",
		"sqldlm_delete_lease(bigint)", "sqldlm_reap(integer,bigint)"} {
		require.Contains(t, v5, "function "+fn)
		require.NotEqual(t, v5["function "+fn], v6["function "+fn], fn)
	}

	_, err = p.DownTo(ctx, 5)
	require.NoError(t, err)
	require.Equal(t, v5, schemaCatalog(ctx, t, db.DB))
}
