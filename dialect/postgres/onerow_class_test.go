package postgres_test

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// scene is a name whose only hold is an inline exclusive hold of lease a
// (token tok, request req), beside two other live leases: b, which the
// operation under test may use, and c, whose fast grant races with it.
type scene struct {
	name      string
	a, b, c   int64
	tok, req  int64
	waiterReq int64
}

// TestOpenOperationAndAFastGrant searches the class the one-row grant
// (schema version 13) opens: every statement that reads or writes a hold
// kept in its name's row, held open in a transaction (as a slow commit, a
// caller's transaction or a lock wait holds it), while another lease's
// uncontended-looking exclusive request runs. Whatever the order, the
// request's answer is the one it would get entirely before the open
// transaction (when it returned without waiting) or entirely after it
// ended (when it waited), by commit or by rollback, and the name never has
// an exclusive hold beside another hold.
func TestOpenOperationAndAFastGrant(t *testing.T) {
	t.Parallel()
	const (
		G = dialect.Granted
		B = dialect.Blocked
	)
	type op struct {
		setup func(f *fixture, s *scene) // after the inline hold is made
		sql   string
		args  func(s *scene) []any
		// The fast grant's answer when it runs entirely before the open
		// transaction, after its commit, and after its rollback.
		before, commit, rollback dialect.AcquireStatus
	}
	dead := func(f *fixture, s *scene) {
		_, err := f.db.ExecContext(f.ctx, `UPDATE sqldlm_leases SET expires_at = clock_timestamp() WHERE id = $1`, s.a)
		require.NoError(f.t, err)
		f.expire(s.a)
	}
	holder := func(s *scene) []any { return []any{s.name, s.a, s.tok} }
	ops := map[string]op{
		"Release":     {sql: `SELECT sqldlm_release($1, $2, $3)`, args: holder, before: B, commit: G, rollback: B},
		"Downgrade":   {sql: `SELECT sqldlm_downgrade($1, $2, $3)`, args: holder, before: B, commit: B, rollback: B},
		"SetPayload":  {sql: `SELECT sqldlm_set_payload($1, $2, $3, 'p2')`, args: holder, before: B, commit: B, rollback: B},
		"Spill":       {sql: `SELECT sqldlm_spill($1, $2, $3)`, args: holder, before: B, commit: B, rollback: B},
		"SpillAny":    {sql: `SELECT sqldlm_spill($1, NULL, NULL)`, args: func(s *scene) []any { return []any{s.name} }, before: B, commit: B, rollback: B},
		"DeleteLease": {sql: `SELECT sqldlm_delete_lease($1)`, args: func(s *scene) []any { return []any{s.a} }, before: B, commit: G, rollback: B},
		"Break":       {sql: `SELECT count(*) FROM sqldlm_break($1, '')`, args: func(s *scene) []any { return []any{s.name} }, before: B, commit: G, rollback: B},
		"Abandon": {sql: `SELECT o_kept FROM sqldlm_abandon($1, $2, $3, false)`,
			args: func(s *scene) []any { return []any{s.name, s.a, s.req} }, before: B, commit: G, rollback: B},
		"AbandonKeep": {sql: `SELECT o_kept FROM sqldlm_abandon($1, $2, $3, true)`,
			args: func(s *scene) []any { return []any{s.name, s.a, s.req} }, before: B, commit: B, rollback: B},
		"AbandonOld": {sql: `SELECT sqldlm_abandon($1::bigint, $2::bigint)`,
			args: func(s *scene) []any { return []any{s.a, s.req} }, before: B, commit: G, rollback: B},
		"Fence": {
			setup: func(f *fixture, s *scene) {
				_, err := f.db.ExecContext(f.ctx, `SELECT sqldlm_spill($1, $2, $3)`, s.name, s.a, s.tok)
				require.NoError(f.t, err)
			},
			sql: `SELECT sqldlm_fence($1, $2, $3, 0)`, args: holder, before: B, commit: B, rollback: B},
		"Enqueue": {sql: `SELECT o_status FROM sqldlm_acquire($1, $2, $3, 'X', true, NULL, '', 0)`,
			args: func(s *scene) []any { return []any{s.name, s.b, rand.Int64()} }, before: B, commit: B, rollback: B},
		"ReleaseNext": {
			setup: func(f *fixture, s *scene) {
				s.waiterReq = rand.Int64()
				res := f.acquire(dialect.AcquireParams{Name: s.name, LeaseID: s.b, RequestID: s.waiterReq, Mode: dialect.Exclusive, Enqueue: true})
				require.Equal(f.t, dialect.Blocked, res.Status)
			},
			sql: `SELECT sqldlm_release_next($1, $2, $3)`, args: holder, before: B, commit: B, rollback: B},
		"Reap": {setup: dead, sql: `SELECT o_holds FROM sqldlm_reap(100, 3600000000)`, args: func(*scene) []any { return nil },
			before: G, commit: G, rollback: G},
		"Takeover": {setup: dead, sql: `SELECT o_status FROM sqldlm_acquire($1, $2, $3, 'X', false, NULL, '', 0)`,
			args: func(s *scene) []any { return []any{s.name, s.b, rand.Int64()} }, before: G, commit: B, rollback: G},
		"AcquireTx": {
			setup: func(f *fixture, s *scene) {
				require.True(f.t, f.release(s.name, s.a, s.tok))
			},
			sql:  `SELECT o_status FROM sqldlm_acquire_tx($1, $2, $3, 'X', '', 0)`,
			args: func(s *scene) []any { return []any{s.name, s.b, rand.Int64()} }, before: G, commit: B, rollback: G},
	}
	for opName, o := range ops {
		for _, commit := range []bool{true, false} {
			end := "Rollback"
			if commit {
				end = "Commit"
			}
			t.Run(opName+"/"+end, func(t *testing.T) {
				t.Parallel()
				f := newFixture(t)
				s := &scene{name: "class/" + opName, a: f.lease("a", time.Minute), b: f.lease("b", time.Minute), c: f.lease("c", time.Minute)}
				f.row(s.name)
				s.req = rand.Int64()
				res := f.acquire(dialect.AcquireParams{Name: s.name, LeaseID: s.a, RequestID: s.req, Mode: dialect.Exclusive})
				require.Equal(t, dialect.Granted, res.Status)
				s.tok = res.Token
				lease, _ := f.inline(s.name)
				require.Equal(t, s.a, lease, "an inline hold")
				if o.setup != nil {
					o.setup(f, s)
				}

				tx := f.begin(f.reopen(), sql.LevelReadCommitted)
				var out sql.NullString
				require.NoError(t, tx.QueryRowContext(f.ctx, o.sql, o.args(s)...).Scan(&out))

				db, pid := f.onePool()
				var done atomic.Bool
				answer := make(chan *dialect.AcquireResult, 1)
				go func() {
					res, err := f.d.Acquire(f.ctx, db, &dialect.AcquireParams{Name: s.name, LeaseID: s.c, RequestID: rand.Int64(), Mode: dialect.Exclusive})
					if !assertNoError(t, err) {
						res = nil
					}
					done.Store(true)
					answer <- res
				}()
				f.waitingOrDone(pid, &done, "the fast grant")
				returnedFirst := done.Load()
				if commit {
					require.NoError(t, tx.Commit())
				} else {
					require.NoError(t, tx.Rollback())
				}
				got := <-answer
				require.NotNil(t, got)
				want := o.rollback
				switch {
				case returnedFirst:
					want = o.before
				case commit:
					want = o.commit
				}
				require.Equal(t, want, got.Status, "returned before the open transaction ended: %v (%s)", returnedFirst, out.String)
				requireOneExclusive(f, s.name)
				if got.Status == dialect.Granted {
					require.Equal(t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1`, s.name))
					require.Equal(t, 1, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_holds WHERE name = $1 AND lease_id = $2 AND token = $3`,
						s.name, s.c, got.Token), "the grant's hold is the name's only hold")
				}
			})
		}
	}
}

// requireOneExclusive fails unless name's holds (of both kinds) are shared
// holds only, or one exclusive hold alone.
func requireOneExclusive(f *fixture, name string) {
	f.t.Helper()
	var all, x int
	require.NoError(f.t, f.db.QueryRowContext(f.ctx, `SELECT count(*), count(*) FILTER (WHERE mode = 'X') FROM sqldlm_holds WHERE name = $1`, name).Scan(&all, &x))
	require.True(f.t, x == 0 || all == 1, fmt.Sprintf("%d holds of %s, %d of them exclusive", all, name, x))
}
