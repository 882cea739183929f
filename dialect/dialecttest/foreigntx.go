package dialecttest

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// ForeignTx is a transaction of another driver than database/sql, adapted
// to dialect.Tx, as a [dialect.ForeignTxLocker] takes it (pgx.Tx through
// package sqldlmpgx's adapter, for PostgreSQL).
type ForeignTx interface {
	dialect.Tx
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// BeginForeign begins a ForeignTx on the database db reaches (at READ
// COMMITTED when readCommitted, at the default level otherwise); the suite
// rolls it back at the end of t if it is still open.
type BeginForeign func(t testing.TB, db *sql.DB, readCommitted bool) ForeignTx

// ExerciseForeignTx runs the suite's in-transaction cases (Fence, ReleaseTx,
// AcquireTx) through the dialect's ForeignTxLocker, in transactions begin
// opens: the same semantics as with a *sql.Tx.
func ExerciseForeignTx(t *testing.T, h Harness, begin BeginForeign) {
	t.Helper()
	f, ok := h.Dialect.(dialect.ForeignTxLocker)
	if !ok {
		t.Fatalf("dialecttest: %T does not implement dialect.ForeignTxLocker", h.Dialect)
	}
	for name, test := range map[string]func(t *testing.T, b *lockerBundle){
		"Fence": func(t *testing.T, b *lockerBundle) {
			a := b.lease("a", short)
			tok := b.grant("n", a, dialect.Exclusive)
			for _, tc := range []struct {
				name           string
				token, leaseID int64
				want           bool
			}{{"n", tok, a, true}, {"n", tok + 1, a, false}, {"n", tok, a + 1, false}, {"other", tok, a, false}} {
				tx := begin(t, b.db, false)
				ok, err := f.FenceIn(b.ctx, b.db, tx, &dialect.HoldRef{Name: tc.name, LeaseID: tc.leaseID, Token: tc.token}, time.Minute)
				require.NoError(t, err)
				require.Equal(t, tc.want, ok, "%+v", tc)
				require.NoError(t, tx.Rollback(b.ctx))
			}
			b.expire(short)
			tx := begin(t, b.db, false)
			ok, err := f.FenceIn(b.ctx, b.db, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}, time.Minute)
			require.NoError(t, err)
			require.False(t, ok, "an expired lease fails the fence")
		},
		"FencePins": func(t *testing.T, b *lockerBundle) {
			a, c := b.lease("a", 2*short), b.lease("c", time.Minute)
			tok := b.grant("n", a, dialect.Exclusive)
			tx := begin(t, b.db, false)
			ok, err := f.FenceIn(b.ctx, b.db, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}, time.Minute)
			require.NoError(t, err)
			require.True(t, ok)
			b.expire(2 * short)
			takeoverWaitsFor(t, b, "n", c, func() error { return tx.Commit(b.ctx) })
		},
		"ReleaseTx": func(t *testing.T, b *lockerBundle) {
			a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
			tok := b.grant("n", a, dialect.Exclusive)
			ref := &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}
			for _, commit := range []bool{false, true} {
				tx := begin(t, b.db, false)
				ok, err := f.ReleaseIn(b.ctx, b.db, tx, ref)
				require.NoError(t, err)
				require.True(t, ok)
				if commit {
					require.NoError(t, tx.Commit(b.ctx))
				} else {
					require.NoError(t, tx.Rollback(b.ctx))
					b.blocked(dialect.AcquireParams{Name: "n", LeaseID: c, Mode: dialect.Exclusive})
				}
			}
			b.grant("n", c, dialect.Exclusive)
			tx := begin(t, b.db, false)
			ok, err := f.ReleaseIn(b.ctx, b.db, tx, ref)
			require.NoError(t, err)
			require.False(t, ok, "a hold that is gone is reported")
		},
		"AcquireTx": func(t *testing.T, b *lockerBundle) {
			a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
			for _, commit := range []bool{false, true} {
				req := rand.Int64()
				require.NoError(t, b.d.CreatePending(b.ctx, b.db, a, req))
				tx := begin(t, b.db, true)
				res, err := f.AcquireIn(b.ctx, tx, &dialect.AcquireParams{Name: "j", LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
				require.NoError(t, err)
				require.Equal(t, dialect.Granted, res.Status)
				out, err := b.d.PendingOutcome(b.ctx, b.db, a, req)
				require.NoError(t, err)
				require.Equal(t, dialect.TxOpen, out)
				if commit {
					require.NoError(t, tx.Commit(b.ctx))
					b.blocked(dialect.AcquireParams{Name: "j", LeaseID: c, Mode: dialect.Exclusive})
					out, err = b.d.PendingOutcome(b.ctx, b.db, a, req)
					require.NoError(t, err)
					require.Equal(t, dialect.TxCommitted, out)
				} else {
					require.NoError(t, tx.Rollback(b.ctx))
					out, err = b.d.PendingOutcome(b.ctx, b.db, a, req)
					require.NoError(t, err)
					require.Equal(t, dialect.TxNotCommitted, out)
					tok := b.grant("j", c, dialect.Exclusive)
					require.True(t, b.release("j", c, tok))
				}
			}
			// A grant that takes over a dead holder reports it (the
			// taken-over holds come back as arrays).
			dead := b.lease("dead", short)
			tok := b.grant("k", dead, dialect.Exclusive)
			b.expire(short)
			req := rand.Int64()
			require.NoError(t, b.d.CreatePending(b.ctx, b.db, c, req))
			tx := begin(t, b.db, true)
			res, err := f.AcquireIn(b.ctx, tx, &dialect.AcquireParams{Name: "k", LeaseID: c, RequestID: req, Mode: dialect.Exclusive})
			require.NoError(t, err)
			require.Equal(t, dialect.Granted, res.Status)
			require.Len(t, res.TookOver, 1)
			require.Equal(t, tok, res.TookOver[0].Token)
			require.Equal(t, "dead", res.TookOver[0].Owner)
			require.NoError(t, tx.Commit(b.ctx))
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			test(t, setupLocker(t, h))
		})
	}
}
