package postgres_test

import (
	"database/sql"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
)

// inline returns the lease and token of name's inline hold (schema version
// 13), or zeros when the name's row has none.
func (f *fixture) inline(name string) (lease, token int64) {
	f.t.Helper()
	var l sql.NullInt64
	err := f.db.QueryRowContext(f.ctx, `SELECT x_lease, token FROM sqldlm_locks WHERE name = $1`, name).Scan(&l, &token)
	if err == sql.ErrNoRows {
		return 0, 0
	}
	require.NoError(f.t, err)
	if !l.Valid {
		return 0, 0
	}
	return l.Int64, token
}

// TestFastGrantIsInline: an uncontended grant of either mode keeps its hold
// in the name's row and writes no row of sqldlm_holders; a second shared
// grant moves the first to sqldlm_holders beside it; a release clears the
// name's row.
func TestFastGrantIsInline(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, b := f.lease("a", time.Minute), f.lease("b", time.Minute)
	for _, m := range []dialect.Mode{dialect.Exclusive, dialect.Shared} {
		name := "inline/" + string(m)
		f.row(name)

		tok := f.grant(name, a, m)
		lease, token := f.inline(name)
		require.Equal(t, a, lease, "the hold is in the name's row")
		require.Equal(t, tok, token)
		require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holders WHERE name = $1`, name))
		require.Equal(t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1 AND mode = $2 AND token = $3`,
			name, string(m), tok))
		require.True(t, f.release(name, a, tok))
		lease, _ = f.inline(name)
		require.Zero(t, lease, "released")
		require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, name))
	}

	f.row("inline/SS")
	s1 := f.grant("inline/SS", a, dialect.Shared)
	s2 := f.grant("inline/SS", b, dialect.Shared)
	lease, _ := f.inline("inline/SS")
	require.Zero(t, lease, "the first shared hold moved out of the name's row")
	require.Equal(t, 2, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holders WHERE name = 'inline/SS' AND token IN ($1, $2)`, s1, s2))
}

func (f *fixture) release(name string, lease, token int64) bool {
	f.t.Helper()
	ok, err := f.d.Release(f.ctx, f.db.DB, &dialect.HoldRef{Name: name, LeaseID: lease, Token: token})
	require.NoError(f.t, err)
	return ok
}

// row makes name's row of sqldlm_locks: the first grant of a name is made
// by the general path, which creates the row; the fast path needs it.
func (f *fixture) row(name string) {
	f.t.Helper()
	_, err := f.db.ExecContext(f.ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES ($1, 0, clock_timestamp())`, name)
	require.NoError(f.t, err)
}

// TestEveryOperationSeesAnInlineHold: each operation, asked about a hold
// kept in its name's row, answers as it does about a row of
// sqldlm_holders. Each case starts from a fresh inline exclusive hold of
// lease a and checks that it is one.
func TestEveryOperationSeesAnInlineHold(t *testing.T) {
	t.Parallel()
	cases := map[string]func(f *fixture, name string, a, b, tok int64){
		"TryLockOfAnother": func(f *fixture, name string, a, b, tok int64) {
			res := f.acquire(dialect.AcquireParams{Name: name, LeaseID: b, Mode: dialect.Shared})
			require.Equal(f.t, dialect.Blocked, res.Status)
			require.Equal(f.t, "a", res.Blocker.Owner)
			require.Equal(f.t, dialect.Exclusive, res.Blocker.Mode)
			lease, _ := f.inline(name)
			require.Equal(f.t, a, lease, "refused by the plain reads: the hold stays in the name's row")
		},
		"RepeatedRequest": func(f *fixture, name string, a, b, tok int64) {
			var req int64
			require.NoError(f.t, f.db.QueryRowContext(f.ctx, `SELECT x_request FROM sqldlm_locks WHERE name = $1`, name).Scan(&req))
			res := f.acquire(dialect.AcquireParams{Name: name, LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
			require.Equal(f.t, dialect.Granted, res.Status)
			require.Equal(f.t, tok, res.Token, "the repeat returns the hold")
		},
		"Enqueue": func(f *fixture, name string, a, b, tok int64) {
			res := f.acquire(dialect.AcquireParams{Name: name, LeaseID: b, Mode: dialect.Exclusive, Enqueue: true})
			require.Equal(f.t, dialect.Blocked, res.Status)
			require.Equal(f.t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_waiters WHERE name = $1`, name))
			ok, err := f.d.(dialect.Notifier).ReleaseHandOver(f.ctx, f.db.DB, &dialect.HoldRef{Name: name, LeaseID: a, Token: tok})
			require.NoError(f.t, err)
			require.True(f.t, ok)
			require.Equal(f.t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1 AND lease_id = $2`, name, b),
				"handed over to the waiter")
		},
		"TakeoverOfADeadHold": func(f *fixture, name string, a, b, tok int64) {
			_, err := f.db.ExecContext(f.ctx, `UPDATE sqldlm_leases SET expires_at = clock_timestamp() WHERE id = $1`, a)
			require.NoError(f.t, err)
			f.expire(a)
			res := f.acquire(dialect.AcquireParams{Name: name, LeaseID: b, Mode: dialect.Exclusive})
			require.Equal(f.t, dialect.Granted, res.Status)
			require.Len(f.t, res.TookOver, 1)
			require.Equal(f.t, tok, res.TookOver[0].Token)
			require.Equal(f.t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, name))
		},
		"SetPayload": func(f *fixture, name string, a, b, tok int64) {
			ok, err := f.d.SetPayload(f.ctx, f.db.DB, &dialect.HoldRef{Name: name, LeaseID: a, Token: tok}, "p2")
			require.NoError(f.t, err)
			require.True(f.t, ok)
			require.Equal(f.t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1 AND payload = 'p2'`, name))
			ok, err = f.d.SetPayload(f.ctx, f.db.DB, &dialect.HoldRef{Name: name, LeaseID: b, Token: tok}, "p3")
			require.NoError(f.t, err)
			require.False(f.t, ok, "another lease's")
		},
		"Downgrade": func(f *fixture, name string, a, b, tok int64) {
			ok, err := f.d.Downgrade(f.ctx, f.db.DB, &dialect.HoldRef{Name: name, LeaseID: a, Token: tok})
			require.NoError(f.t, err)
			require.True(f.t, ok)
			require.Equal(f.t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holders WHERE name = $1 AND mode = 'S' AND token = $2`, name, tok))
			require.Equal(f.t, dialect.Granted, f.acquire(dialect.AcquireParams{Name: name, LeaseID: b, Mode: dialect.Shared}).Status)
		},
		"Fence": func(f *fixture, name string, a, b, tok int64) {
			tx := f.begin(f.db.DB, sql.LevelReadCommitted)
			defer func() { _ = tx.Rollback() }()
			ok, err := f.d.Fence(f.ctx, f.db.DB, tx, &dialect.HoldRef{Name: name, LeaseID: a, Token: tok}, 0)
			require.NoError(f.t, err)
			require.True(f.t, ok)
			require.Equal(f.t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holders WHERE name = $1 AND token = $2`, name, tok),
				"fenced as a row of sqldlm_holders")
		},
		"AbandonKeep": func(f *fixture, name string, a, b, tok int64) {
			var req int64
			require.NoError(f.t, f.db.QueryRowContext(f.ctx, `SELECT x_request FROM sqldlm_locks WHERE name = $1`, name).Scan(&req))
			res, err := f.d.Abandon(f.ctx, f.db.DB, &dialect.AbandonParams{Name: name, LeaseID: a, RequestID: req, KeepHold: true})
			require.NoError(f.t, err)
			require.Equal(f.t, tok, res.Kept)
		},
		"Abandon": func(f *fixture, name string, a, b, tok int64) {
			var req int64
			require.NoError(f.t, f.db.QueryRowContext(f.ctx, `SELECT x_request FROM sqldlm_locks WHERE name = $1`, name).Scan(&req))
			res, err := f.d.Abandon(f.ctx, f.db.DB, &dialect.AbandonParams{Name: name, LeaseID: a, RequestID: req})
			require.NoError(f.t, err)
			require.Equal(f.t, []string{name}, res.Freed)
			require.Zero(f.t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, name))
		},
		"DeleteLease": func(f *fixture, name string, a, b, tok int64) {
			freed, err := f.d.DeleteLease(f.ctx, f.db.DB, a)
			require.NoError(f.t, err)
			require.Equal(f.t, []string{name}, freed)
			require.Zero(f.t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, name))
		},
		"Reap": func(f *fixture, name string, a, b, tok int64) {
			_, err := f.db.ExecContext(f.ctx, `UPDATE sqldlm_leases SET expires_at = clock_timestamp() WHERE id = $1`, a)
			require.NoError(f.t, err)
			f.expire(a)
			res, err := f.d.Reap(f.ctx, f.db.DB, 100, time.Hour)
			require.NoError(f.t, err)
			require.Equal(f.t, 1, res.Holds)
			require.Equal(f.t, []string{name}, res.Freed)
			require.Zero(f.t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, name))
			require.Zero(f.t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_leases WHERE id = $1`, a))
		},
		"Break": func(f *fixture, name string, a, b, tok int64) {
			leases, err := f.d.(dialect.Inspector).Break(f.ctx, f.db.DB, name, "")
			require.NoError(f.t, err)
			require.Len(f.t, leases, 1)
			require.Equal(f.t, a, leases[0].ID)
			require.Equal(f.t, 1, leases[0].Holds)
		},
		"Inspect": func(f *fixture, name string, a, b, tok int64) {
			in := f.d.(dialect.Inspector)
			locks, err := in.Locks(f.ctx, f.db.DB, &dialect.LocksFilter{Prefix: name})
			require.NoError(f.t, err)
			require.Len(f.t, locks, 1)
			require.Len(f.t, locks[0].Holders, 1)
			require.Equal(f.t, tok, locks[0].Holders[0].Token)
			require.Equal(f.t, "a", locks[0].Holders[0].Owner)
			leases, err := in.Leases(f.ctx, f.db.DB)
			require.NoError(f.t, err)
			for _, l := range leases {
				if l.ID == a {
					require.Equal(f.t, 1, l.Holds)
				}
			}
			require.Equal(f.t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holders_view WHERE name = $1 AND owner = 'a' AND mode = 'exclusive'`, name))
			require.Equal(f.t, 1, f.count(f.db.DB, `SELECT holds::int FROM sqldlm_leases_view WHERE lease_id = $1`, a))
		},
	}
	for caseName, run := range cases {
		t.Run(caseName, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			a, b := f.lease("a", time.Minute), f.lease("b", time.Minute)
			name := "seen/" + caseName
			f.row(name)
			tok := f.grant(name, a, dialect.Exclusive)
			lease, token := f.inline(name)
			require.Equal(t, a, lease, "an inline hold")
			require.Equal(t, tok, token)
			run(f, name, a, b, tok)
		})
	}
}

// Down from version 13 restores version 12 exactly, and the holds of both
// kinds survive both ways: a hold of version 12 stays a row of
// sqldlm_holders through Up; a grant after Up is inline, and Down moves it
// to sqldlm_holders with its token, request, time and payload; both are
// then released by version 12's functions.
func TestMigrationDownRestoresVersion12(t *testing.T) {
	t.Parallel()
	ctx, db, p := atVersion(t, 12)
	v12 := schemaCatalog(ctx, t, db.DB)
	d := postgres.Dialect()
	a := int64(7)
	require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: a, Owner: "m", TTL: time.Minute}))
	acquire := func(name string, req int64, payload string) int64 {
		res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: a, RequestID: req, Mode: dialect.Exclusive, Payload: payload})
		require.NoError(t, err)
		require.Equal(t, dialect.Granted, res.Status)
		return res.Token
	}
	old := acquire("old", 1, "p-old")

	_, err := p.UpTo(ctx, 13)
	require.NoError(t, err)
	v13 := schemaCatalog(ctx, t, db.DB)
	require.Contains(t, v13, "relation sqldlm_holds")
	require.Contains(t, v13, "function sqldlm_spill(text,bigint,bigint)")
	require.NotEqual(t, v12["relation sqldlm_locks"], v13["relation sqldlm_locks"])
	var n int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM sqldlm_holders WHERE token = $1 AND name = 'old'`, old).Scan(&n))
	require.Equal(t, 1, n, "version 12's hold stays where it was")
	_, err = db.ExecContext(ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES ('new', 0, clock_timestamp())`)
	require.NoError(t, err)
	fresh := acquire("new", 2, "p-new")
	var since time.Time
	require.NoError(t, db.QueryRowContext(ctx, `SELECT x_since FROM sqldlm_locks WHERE name = 'new' AND x_lease = $1 AND token = $2`, a, fresh).Scan(&since),
		"the grant after Up is inline")

	_, err = p.DownTo(ctx, 12)
	require.NoError(t, err)
	require.Equal(t, v12, schemaCatalog(ctx, t, db.DB))
	var (
		req     int64
		mode    string
		at      time.Time
		payload string
	)
	require.NoError(t, db.QueryRowContext(ctx, `SELECT request_id, mode, acquired_at, payload FROM sqldlm_holders
		WHERE name = 'new' AND lease_id = $1 AND token = $2`, a, fresh).Scan(&req, &mode, &at, &payload))
	require.Equal(t, []any{int64(2), "X", "p-new"}, []any{req, mode, payload})
	require.True(t, since.Equal(at), "acquired at %v, moved with %v", since, at)
	for name, tok := range map[string]int64{"old": old, "new": fresh} {
		ok, err := d.Release(ctx, db.DB, &dialect.HoldRef{Name: name, LeaseID: a, Token: tok})
		require.NoError(t, err)
		require.True(t, ok, name)
	}
}

// TestReapAndDeleteLeaseLockNamesFirst: a grant's general path holds the
// name's row (FOR UPDATE, through sqldlm_spill) and then locks a dead
// lease it takes over; Reap and DeleteLease lock leases and then clear the
// inline holds of them in names' rows. Neither may wait for the name's row
// while it holds the lease: the two would deadlock. Reap skips the locked
// row and keeps that hold's lease for a later pass (deleting the lease
// would leave the hold without one); DeleteLease locks the names' rows
// before the lease, so the grant's lease lock is not held up by it.
func TestReapAndDeleteLeaseLockNamesFirst(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"Reap", "DeleteLease"} {
		t.Run(op, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			a := f.lease("a", time.Minute)
			const name = "locked/n"
			f.row(name)
			tok := f.grant(name, a, dialect.Exclusive)
			_, err := f.db.ExecContext(f.ctx, `UPDATE sqldlm_leases SET expires_at = clock_timestamp() WHERE id = $1`, a)
			require.NoError(t, err)
			f.expire(a)

			// The general path of a grant, held open after sqldlm_spill.
			grant := f.begin(f.reopen(), sql.LevelReadCommitted)
			defer func() { _ = grant.Rollback() }()
			var found bool
			require.NoError(t, grant.QueryRowContext(f.ctx, `SELECT sqldlm_spill($1, NULL, NULL)`, name).Scan(&found))
			require.True(t, found)

			db, pid := f.onePool()
			var done atomic.Bool
			errs := make(chan error, 1)
			var reaped *dialect.ReapResult
			go func() {
				var err error
				if op == "Reap" {
					reaped, err = f.d.Reap(f.ctx, db, 100, time.Hour)
				} else {
					_, err = f.d.DeleteLease(f.ctx, db, a)
				}
				done.Store(true)
				errs <- err
			}()
			f.waitingOrDone(pid, &done, op)
			// The grant goes on to lock the dead lease it takes over.
			_, err = grant.ExecContext(f.ctx, `SELECT 1 FROM sqldlm_leases WHERE id = $1 FOR NO KEY UPDATE`, a)
			require.NoError(t, err, "the grant's lock of the lease")
			require.NoError(t, grant.Commit())
			require.NoError(t, <-errs)
			if op == "Reap" {
				require.Zero(t, reaped.Holds, "the hold's row was locked")
				require.Equal(t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_leases WHERE id = $1`, a),
					"the lease of a hold Reap could not clear is kept")
				reaped, err = f.d.Reap(f.ctx, f.db.DB, 100, time.Hour)
				require.NoError(t, err)
				require.Equal(t, 1, reaped.Holds, "a later pass clears it")
			}
			require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1 AND token = $2`, name, tok))
			require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_leases WHERE id = $1`, a))
		})
	}
}
