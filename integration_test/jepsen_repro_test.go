//go:build linux

package integration_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Found by TestJepsen on MariaDB (a waiter row left after the final phase),
// in schema versions up to 4 as first written:
// sqldlm_acquire decides in one transaction, rolls it back, and inserts the
// waiter row of a blocked request in a second transaction that does not
// check (or lock) the lease. A lease deleted in between (by the reaper, or
// by DeleteLease after a loss) leaves a waiter row of a lease that no
// longer exists, which nothing deletes: the reaper deletes waiters by
// lease, and the client, on LeaseLost, leaves them to the lease's deletion.
// The PostgreSQL function locks the lease FOR KEY SHARE before the insert.
//
// The fix: the insert's transaction first locks the lease in share mode and
// enqueues only if it is live. Here another session does what the reaper
// does (lock the lease FOR UPDATE, delete its waiters and the lease, commit)
// while a blocked request is being enqueued: the enqueue must wait for the
// lease's lock, then find the lease gone and report the lease lost, leaving
// no waiter row. Without the fix the enqueue does not wait at all.
func TestMySQLWaiterOfDeletedLease(t *testing.T) {
	db := testdb.OpenMigrated(t, testdb.MySQL)
	d := db.Dialect
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const holder, waiter = int64(1001), int64(1002)
	for _, id := range []int64{holder, waiter} {
		require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: id, Owner: "o", TTL: 20 * time.Second}))
	}
	res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "x", LeaseID: holder, RequestID: 1, Mode: dialect.Exclusive})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)

	other, err := db.Conn(ctx)
	require.NoError(t, err)
	defer other.Close()
	_, err = other.ExecContext(ctx, `START TRANSACTION`)
	require.NoError(t, err)
	var id int64
	require.NoError(t, other.QueryRowContext(ctx, `SELECT id FROM sqldlm_leases WHERE id = ? FOR UPDATE`, waiter).Scan(&id))

	type outcome struct {
		res *dialect.AcquireResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "x", LeaseID: waiter, RequestID: 42, Mode: dialect.Exclusive, Enqueue: true})
		done <- outcome{res, err}
	}()
	for {
		var n int
		// The lease is read by primary key, so the statement waits for its
		// lock while being optimised (state "Statistics"), which
		// information_schema.innodb_trx does not show as a lock wait.
		require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.processlist
			WHERE db = DATABASE() AND id <> CONNECTION_ID() AND info LIKE '%FROM sqldlm_leases%'`).Scan(&n))
		if n > 0 {
			break // the enqueue waits for the lease's lock
		}
		select {
		case o := <-done:
			t.Fatalf("the blocked request was enqueued without locking its lease: %+v, %v", o.res, o.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// What the reaper does to a dead lease, having locked it.
	for _, stmt := range []string{`DELETE FROM sqldlm_waiters WHERE lease_id = ?`, `DELETE FROM sqldlm_leases WHERE id = ?`} {
		_, err = other.ExecContext(ctx, stmt, waiter)
		require.NoError(t, err)
	}
	_, err = other.ExecContext(ctx, `COMMIT`)
	require.NoError(t, err)
	o := <-done
	require.NoError(t, o.err)
	require.Equal(t, dialect.LeaseLost, o.res.Status, "a request of a deleted lease")
	var orphans int
	require.NoError(t, db.QueryRowContext(ctx,
		`SELECT COUNT(*) FROM sqldlm_waiters w WHERE NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = w.lease_id)`).Scan(&orphans))
	require.Zero(t, orphans, "a waiter row of a lease that no longer exists")
}
