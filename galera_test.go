package sqldlm

import (
	"context"
	"database/sql"
	"sync/atomic"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// notReadyDialect answers its next CreateLease and Acquire calls with
// Galera's 1047 (a node without quorum), classified by the real dialect,
// without running them.
type notReadyDialect struct {
	dialect.Dialect
	leases, acquires atomic.Int64 // so many next calls fail
}

func (d *notReadyDialect) notReady() error {
	return d.ClassifyError(&gomysql.MySQLError{Number: 1047, Message: "WSREP has not yet prepared node for application use"})
}

func (d *notReadyDialect) CreateLease(ctx context.Context, db *sql.DB, p *dialect.CreateLeaseParams) error {
	if d.leases.Add(-1) >= 0 {
		return d.notReady()
	}
	return d.Dialect.CreateLease(ctx, db, p)
}

func (d *notReadyDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	if d.acquires.Add(-1) >= 0 {
		return nil, d.notReady()
	}
	return d.Dialect.Acquire(ctx, db, p)
}

// G7: a Galera node that lost quorum answers 1047 until it is part of a
// Primary component again: Lock waits through it (lease creation and
// acquire), TryLock fails at once with an error matching
// dialect.ErrConnection. (Before: Lock returned the first 1047.)
func TestLockWaitsThroughGaleraNotReady(t *testing.T) {
	t.Parallel()
	// MySQL/MariaDB only: 1047 is Galera's.
	b := &lockBundle{db: testdb.OpenMigrated(t, testdb.MySQL), kind: testdb.MySQL}
	ctx := testCtx(t)
	d := &notReadyDialect{Dialect: b.db.Dialect}
	c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})

	d.leases.Store(1)
	_, err := c.TryLock(ctx, "galera/not-ready", Exclusive)
	require.ErrorIs(t, err, dialect.ErrConnection, "TryLock fails at once on lease creation")
	d.acquires.Store(2)
	_, err = c.TryLock(ctx, "galera/not-ready", Exclusive)
	require.ErrorIs(t, err, dialect.ErrConnection, "TryLock fails at once on acquire")

	cur, err := c.currentLease(ctx)
	require.NoError(t, err)
	cur.end(ErrLost, "test: Lock needs a new lease")
	d.leases.Store(3)
	d.acquires.Store(3)
	l, err := c.Lock(ctx, "galera/not-ready", Exclusive)
	require.NoError(t, err, "Lock waits for the node")
	require.Negative(t, d.leases.Load(), "every failing lease creation was tried")
	require.Negative(t, d.acquires.Load(), "every failing acquire was tried")
	requireHeldAsReported(t, b, l)
	require.NoError(t, l.Release(ctx))
}
