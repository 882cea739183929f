package sqlite_test

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/dialecttest"
	"github.com/sqldlm/sqldlm/dialect/sqlite"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

func harness() dialecttest.Harness {
	return dialecttest.Harness{
		Dialect: sqlite.Dialect(),
		Open: func(t testing.TB) (*sql.DB, func(testing.TB) *sql.DB) {
			db := testdb.Open(t, testdb.SQLite)
			return db.DB, func(t testing.TB) *sql.DB { return testdb.Reopen(t, db.Kind, db.DSN).DB }
		},
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	dialecttest.Exercise(t, harness())
}

func TestConformanceWithdraw(t *testing.T) {
	t.Parallel()
	dialecttest.ExerciseWithdraw(t, harness())
}

// schemaOf returns the schema's objects (tables, indexes, views, triggers)
// with their SQL, as SQLite keeps them.
func schemaOf(ctx context.Context, t *testing.T, db *sql.DB) map[string]string {
	t.Helper()
	rows, err := db.QueryContext(ctx, `SELECT type || ' ' || name, COALESCE(sql, '') FROM sqlite_schema`)
	require.NoError(t, err)
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		require.NoError(t, rows.Scan(&k, &v))
		out[k] = v
	}
	require.NoError(t, rows.Err())
	return out
}

// Down from version 4 restores version 3 exactly (as a database migrated
// only to version 3 has it): sqldlm_withdrawn and its index are gone.
func TestMigrationDownRestoresVersion3(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := testdb.Open(t, testdb.SQLite)
	p, err := migrations.NewProvider(db.DB, sqlite.Dialect())
	require.NoError(t, err)

	_, err = p.UpTo(ctx, 3)
	require.NoError(t, err)
	v3 := schemaOf(ctx, t, db.DB)
	require.NotContains(t, v3, "table sqldlm_withdrawn")
	_, err = p.UpTo(ctx, 4)
	require.NoError(t, err)
	v4 := schemaOf(ctx, t, db.DB)
	require.Contains(t, v4, "table sqldlm_withdrawn")
	require.Contains(t, v4, "index sqldlm_withdrawn_at")

	_, err = p.DownTo(ctx, 3)
	require.NoError(t, err)
	require.Equal(t, v3, schemaOf(ctx, t, db.DB))
	_, err = p.Up(ctx)
	require.NoError(t, err, "and up again")
}

// Reap deletes withdrawal records older than WithdrawnRetention, of live
// leases too, and keeps younger ones.
func TestReapWithdrawnAfterRetention(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := sqlite.Dialect()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	lease := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: lease, Owner: "o", TTL: time.Hour}))
	for _, id := range []int64{1, 2} {
		_, err := d.Abandon(ctx, db.DB, &dialect.AbandonParams{Name: "n", LeaseID: lease, RequestID: id})
		require.NoError(t, err)
	}
	_, err := db.ExecContext(ctx, `UPDATE sqldlm_withdrawn SET withdrawn_at = withdrawn_at - ? WHERE request_id = 1`,
		(dialect.WithdrawnRetention + time.Minute).Microseconds())
	require.NoError(t, err)
	_, err = d.Reap(ctx, db.DB, 100, time.Hour)
	require.NoError(t, err)
	var left []int64
	rows, err := db.QueryContext(ctx, `SELECT request_id FROM sqldlm_withdrawn`)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		left = append(left, id)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []int64{2}, left)
}

// A transaction that read before another connection committed cannot write
// any more (SQLITE_BUSY_SNAPSHOT): Fence and ReleaseTx in it fail with a
// serialization error (retry the transaction), not a lock timeout, as on
// the other dialects at REPEATABLE READ.
func TestStaleSnapshotIsASerializationFailure(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := sqlite.Dialect()
	db := testdb.Open(t, testdb.SQLite).DB
	_, err := migrations.Up(ctx, db, d)
	require.NoError(t, err)
	lease := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, db, &dialect.CreateLeaseParams{ID: lease, Owner: "a", TTL: time.Minute}))
	res, err := d.Acquire(ctx, db, &dialect.AcquireParams{Name: "n", LeaseID: lease, RequestID: rand.Int64(), Mode: dialect.Exclusive})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	ref := &dialect.HoldRef{Name: "n", LeaseID: lease, Token: res.Token}
	for _, op := range []string{"fence", "releasetx"} {
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		var n int
		require.NoError(t, tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_holders`).Scan(&n)) // the snapshot
		ok, err := d.RenewLease(ctx, db, lease)                                                     // another connection commits
		require.NoError(t, err)
		require.True(t, ok)
		if op == "fence" {
			_, err = d.Fence(ctx, db, tx, ref, time.Minute)
		} else {
			_, err = d.ReleaseTx(ctx, db, tx, ref)
		}
		require.ErrorIs(t, err, dialect.ErrSerialization, op)
		require.NoError(t, tx.Rollback())
	}
}

// PendingOutcome is asked while the caller's transaction may still be open
// and holding SQLite's write lock, possibly by the caller's own goroutine
// (Upgrade, SetPayload or Fence on a lock pending in that transaction). It
// must answer at once, not wait behind a write of the same pool that itself
// waits for that transaction: the caller would wait for the renewal, the
// renewal for the caller's commit, until the busy timeout (10 s), long
// enough for the lease to expire. Seen as TestTryLockTxCommit/sqlite
// timing out under load.
func TestPendingOutcomeDoesNotWaitBehindTheCallersTransaction(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := sqlite.Dialect()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	client := testdb.Reopen(t, db.Kind, db.DSN).DB // the sqldlm client's own pool
	lease := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, client, &dialect.CreateLeaseParams{ID: lease, Owner: "o", TTL: time.Hour}))

	// The caller's transaction, in the caller's pool, takes the write lock.
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = tx.ExecContext(ctx, `UPDATE sqldlm_settings SET audit = audit WHERE id = 1`)
	require.NoError(t, err)

	// A renewal in the client's pool waits for it, inside the pool's gate.
	renewed := make(chan error, 1)
	go func() {
		_, err := d.RenewLease(ctx, client, lease)
		renewed <- err
	}()
	// The renewal has passed the gate once its connection is out of the pool.
	require.Eventually(t, func() bool { return client.Stats().InUse > 0 }, 10*time.Second, time.Millisecond,
		"the renewal never started")

	askCtx, askCancel := context.WithTimeout(ctx, 3*time.Second)
	defer askCancel()
	out, err := d.PendingOutcome(askCtx, client, lease, 1)
	require.NoError(t, err, "PendingOutcome waited behind the renewal that waits for the caller's transaction")
	require.Equal(t, dialect.TxOpen, out)
	select {
	case err := <-renewed:
		t.Fatalf("the renewal ended (%v) while the caller's transaction held the write lock", err)
	default:
	}

	require.NoError(t, tx.Commit())
	require.NoError(t, <-renewed)
	out, err = d.PendingOutcome(ctx, client, lease, 1)
	require.NoError(t, err)
	require.Equal(t, dialect.TxNotCommitted, out, "no hold of request 1 exists")
}
