package sqlite_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/sqlite"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// A statement whose ctx ends at any moment, BEGIN included, never leaves a
// connection inside a transaction in the pool: the next statement on it
// would fail with "cannot start a transaction within a transaction" (S11's
// cancellation storm on SQLite, under load). Every attempt is followed by
// one with a live ctx on the pool's only connection, which must succeed.
func TestCancelledStatementsLeaveNoOpenTransaction(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	db.SetMaxOpenConns(1)
	d := sqlite.Dialect()
	bg, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const lease = 7
	require.NoError(t, d.CreateLease(bg, db.DB, &dialect.CreateLeaseParams{ID: lease, Owner: "storm", TTL: time.Minute}))
	rng := rand.New(rand.NewPCG(11, 12))
	for i := range 400 {
		ctx, stop := context.WithTimeout(bg, time.Duration(rng.IntN(60))*time.Microsecond)
		_, _ = d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "n", LeaseID: lease, RequestID: int64(i + 1), Mode: dialect.Exclusive})
		stop()
		res, err := d.Acquire(bg, db.DB, &dialect.AcquireParams{Name: "m", LeaseID: lease, RequestID: int64(100000 + i), Mode: dialect.Exclusive})
		require.NoError(t, err, "attempt %d after a cancelled one", i)
		require.Equal(t, dialect.Granted, res.Status)
		ok, err := d.Release(bg, db.DB, &dialect.HoldRef{Name: "m", LeaseID: lease, Token: res.Token})
		require.NoError(t, err)
		require.True(t, ok)
	}
}
