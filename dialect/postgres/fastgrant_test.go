package postgres_test

import (
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// TestFastGrantWaitsForAnOpenGrant: sqldlm_acquire's fast path (schema
// version 10) decides on its statement's snapshot, then UPDATEs the name's
// row. A grant of the same name in a transaction still open when the fast
// path's snapshot is taken is invisible to it; the fast path's UPDATE then
// waits for that transaction's lock on the row. Whichever way the other
// grant was made (the fast path itself, or the general path that creates
// the name's row), once it commits the waiting request must not be granted
// too: it answers blocked, and the name has one hold. Once it rolls back,
// the waiting request is granted. For each pair of modes that conflict, and
// for a shared request beside a shared grant (both granted).
func TestFastGrantWaitsForAnOpenGrant(t *testing.T) {
	t.Parallel()
	type pair struct{ first, second dialect.Mode }
	modes := map[string]pair{
		"XX": {dialect.Exclusive, dialect.Exclusive},
		"XS": {dialect.Exclusive, dialect.Shared},
		"SX": {dialect.Shared, dialect.Exclusive},
		"SS": {dialect.Shared, dialect.Shared},
	}
	for modeName, m := range modes {
		for _, rowExists := range []bool{true, false} {
			for _, commit := range []bool{true, false} {
				path, end := "GeneralPath", "Rollback"
				if rowExists {
					path = "FastPath"
				}
				if commit {
					end = "Commit"
				}
				t.Run(modeName+"/"+path+"/"+end, func(t *testing.T) {
					t.Parallel()
					f := newFixture(t)
					a, b := f.lease("a", time.Minute), f.lease("b", time.Minute)
					if rowExists {
						_, err := f.db.ExecContext(f.ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES ('n', 0, clock_timestamp())`)
						require.NoError(t, err)
					}
					tx := f.begin(f.reopen(), sql.LevelReadCommitted)
					first := f.acquireTx(tx, dialect.AcquireParams{Name: "n", LeaseID: a, Mode: m.first})
					require.Equal(t, dialect.Granted, first.Status)

					db, pid := f.onePool()
					var done atomic.Bool
					answer := make(chan *dialect.AcquireResult, 1)
					go func() {
						res, err := f.d.Acquire(f.ctx, db, &dialect.AcquireParams{Name: "n", LeaseID: b, RequestID: rand.Int64(), Mode: m.second})
						if !assertNoError(t, err) {
							res = nil
						}
						done.Store(true)
						answer <- res
					}()
					f.waitingOrDone(pid, &done, "the second request")
					require.False(t, done.Load(), "the second request did not wait for the open grant's transaction")

					if commit {
						require.NoError(t, tx.Commit())
					} else {
						require.NoError(t, tx.Rollback())
					}
					res := <-answer
					require.NotNil(t, res)
					holds := f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = 'n'`)
					switch {
					case !commit:
						require.Equal(t, dialect.Granted, res.Status, "the open grant rolled back")
						require.Equal(t, 1, holds)
					case m.first == dialect.Shared && m.second == dialect.Shared:
						// The fast path refuses a name that has a hold; the
						// general path grants the second shared hold.
						require.Equal(t, dialect.Granted, res.Status)
						require.Equal(t, 2, holds)
						require.Greater(t, res.Token, first.Token)
					default:
						require.Equal(t, dialect.Blocked, res.Status, "granted beside the committed grant of token %d", first.Token)
						require.Equal(t, 1, holds)
					}
				})
			}
		}
	}
}

// TestFastGrantTokensGrowPerName: the fast path draws its token in the
// UPDATE of the name's row; the general path's identity default draws from
// the same sequence. Granting a name alternately by both paths (a held name
// takes the general path) gives strictly growing tokens, and the name's row
// shows the last one.
func TestFastGrantTokensGrowPerName(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a, b := f.lease("a", time.Minute), f.lease("b", time.Minute)
	var last int64
	for i := range 20 {
		tok := f.grant("n", a, dialect.Shared) // fast when the name is free, general otherwise
		require.Greater(t, tok, last, "grant %d", i)
		last = tok
		if i%2 == 0 {
			tok = f.grant("n", b, dialect.Shared) // a second shared hold: the general path
			require.Greater(t, tok, last, "grant %d", i)
			last = tok
			_, err := f.d.Release(f.ctx, f.db.DB, &dialect.HoldRef{Name: "n", LeaseID: b, Token: tok})
			require.NoError(t, err)
		}
		var rowToken int64
		require.NoError(t, f.db.QueryRowContext(f.ctx, `SELECT token FROM sqldlm_locks WHERE name = 'n'`).Scan(&rowToken))
		require.Equal(t, last, rowToken)
		_, err := f.d.DeleteLease(f.ctx, f.db.DB, a)
		require.NoError(t, err)
		a = f.lease("a", time.Minute)
	}
}

// Down from version 10 restores version 9 exactly: the four functions it
// replaced, and nothing else changed.
func TestMigrationDownRestoresVersion9(t *testing.T) {
	t.Parallel()
	downRestores(t, 9, "sqldlm_acquire(text,bigint,bigint,text,boolean,bigint,text,bigint)",
		"sqldlm_abandon(text,bigint,bigint,boolean)", "sqldlm_release(text,bigint,bigint)",
		"sqldlm_release_next(text,bigint,bigint)")
}

// Down from version 11 restores version 10 exactly: only sqldlm_reap
// changed.
func TestMigrationDownRestoresVersion10(t *testing.T) {
	t.Parallel()
	downRestores(t, 10, "sqldlm_reap(integer,bigint)")
}

// downRestores migrates a schema to version v, then one version up, checks
// that exactly the functions changed (their signatures) differ, then
// migrates down to v and checks that the catalog is v's again.
func downRestores(t *testing.T, v int64, changed ...string) {
	t.Helper()
	ctx, db, p := atVersion(t, v)
	before := schemaCatalog(ctx, t, db.DB)
	_, err := p.UpTo(ctx, v+1)
	require.NoError(t, err)
	after := schemaCatalog(ctx, t, db.DB)
	for _, fn := range changed {
		require.Contains(t, before, "function "+fn)
		require.NotEqual(t, before["function "+fn], after["function "+fn], fn)
		delete(after, "function "+fn)
	}
	for k, def := range after {
		require.Equal(t, before[k], def, "%s changed", k)
	}
	require.Len(t, after, len(before)-len(changed))

	_, err = p.DownTo(ctx, v)
	require.NoError(t, err)
	require.Equal(t, before, schemaCatalog(ctx, t, db.DB))
}

// TestFastGrantChecksTheLeaseAfterTheLocks: the fast path's statement checks
// the lease when it starts, then may wait for the name's row. A lease that
// expires during that wait must not be granted the name: the grant is
// undone and the answer is lease_lost. The name's row is held by a
// transaction that only locked it (as a request that ended blocked does),
// so the waiting UPDATE goes on after it without re-checking its WHERE. The
// wait is bounded by sqldlm_acquire's lock_timeout of 1s, so the lease lives
// 600ms; a round whose wait timed out first (a loaded machine) proves
// nothing and is run again.
func TestFastGrantChecksTheLeaseAfterTheLocks(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for round := range 10 {
		name := fmt.Sprintf("n%d", round)
		blocker := f.lockNameRow(name)
		w := f.lease("w", 600*time.Millisecond)
		db, pid := f.onePool()
		var done atomic.Bool
		type outcome struct {
			res *dialect.AcquireResult
			err error
		}
		answer := make(chan outcome, 1)
		go func() {
			res, err := f.d.Acquire(f.ctx, db, &dialect.AcquireParams{Name: name, LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive})
			done.Store(true)
			answer <- outcome{res, err}
		}()
		f.waitingOrDone(pid, &done, "the acquire")
		f.expire(w)
		require.NoError(t, blocker.Commit())
		got := <-answer
		if errors.Is(got.err, dialect.ErrLockTimeout) {
			t.Logf("round %d: the acquire's lock wait timed out before the lease expired", round)
			continue
		}
		require.NoError(t, got.err)
		require.Equal(t, dialect.LeaseLost, got.res.Status, "granted to a lease that expired while the grant waited")
		require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, name), "the undone grant left a hold")
		return
	}
	t.Fatal("every round's lock wait timed out before the lease expired")
}
