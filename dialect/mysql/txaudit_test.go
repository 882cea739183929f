package mysql_test

// Schema version 3 on MySQL/MariaDB: AcquireTx in the caller's transaction
// (REPEATABLE READ snapshots, visibility, the pending record, renewals and
// reaps that must not wait for it), the audit rows each procedure writes,
// pruning, and the down migration back to version 2.

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

const (
	X = dialect.Exclusive
	S = dialect.Shared
)

// qcount runs a COUNT query on q (a pool or a transaction).
func (e *env) qcount(q dialect.Querier, query string, args ...any) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, q.QueryRowContext(e.ctx, query, args...).Scan(&n))
	return n
}

func (e *env) begin(db *sql.DB, level sql.IsolationLevel) *sql.Tx {
	e.t.Helper()
	tx, err := db.BeginTx(e.ctx, &sql.TxOptions{Isolation: level})
	require.NoError(e.t, err)
	e.t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

// acquireTx records the request as pending and makes it in tx.
func (e *env) acquireTx(tx *sql.Tx, p dialect.AcquireParams) (*dialect.AcquireResult, error) {
	e.t.Helper()
	if p.RequestID == 0 {
		p.RequestID = rand.Int64()
	}
	require.NoError(e.t, d.CreatePending(e.ctx, e.db.DB, p.LeaseID, p.RequestID))
	return d.AcquireTx(e.ctx, tx, &p)
}

func (e *env) outcome(leaseID, requestID int64) dialect.TxOutcome {
	e.t.Helper()
	// Never waits for a lock: a short deadline catches a wait.
	ctx, cancel := context.WithTimeout(e.ctx, 3*time.Second)
	defer cancel()
	out, err := d.PendingOutcome(ctx, e.db.DB, leaseID, requestID)
	require.NoError(e.t, err)
	return out
}

func (e *env) pending(leaseID, requestID int64) int {
	e.t.Helper()
	return e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_pending WHERE lease_id = ? AND request_id = ?`, leaseID, requestID)
}

func (e *env) release(db *sql.DB, name string, leaseID, token int64) {
	e.t.Helper()
	ok, err := d.Release(e.ctx, db, &dialect.HoldRef{Name: name, LeaseID: leaseID, Token: token})
	require.NoError(e.t, err)
	require.True(e.t, ok)
}

func (e *env) setAudit(enabled bool, retention time.Duration) {
	e.t.Helper()
	require.NoError(e.t, d.SetAuditSettings(e.ctx, e.db.DB, &dialect.AuditSettings{Enabled: enabled, Retention: retention}))
}

func (e *env) auditLog(f dialect.AuditFilter) []dialect.AuditEntry {
	e.t.Helper()
	log, err := d.AuditLog(e.ctx, e.db.DB, &f)
	require.NoError(e.t, err)
	return log
}

// impatient opens a pool whose lock waits time out after a second, so that
// an operation that waited for a lock fails instead of hanging.
func (e *env) impatient() *sql.DB {
	e.t.Helper()
	return e.pool(url.Values{"innodb_lock_wait_timeout": {"1"}})
}

// TestAcquireTxOldSnapshot: at REPEATABLE READ, AcquireTx refuses a
// transaction whose snapshot predates another client's grant (and release)
// of the name, whether the snapshot has the name's row with an older token
// or no row at all, and changes nothing: the transaction goes on, its
// commit adds no hold, no audit row, and the pending record is untouched. A
// REPEATABLE READ transaction whose snapshot is taken by AcquireTx itself, or
// that asks for a name nobody has granted since, is granted.
func TestAcquireTxOldSnapshot(t *testing.T) {
	e := newEnv(t)
	e.setAudit(true, time.Hour)
	a, b := e.lease(e.db.DB, "a", time.Minute), e.lease(e.db.DB, "b", time.Minute)
	e.release(e.db.DB, "used", b, e.grant(e.db.DB, "used", b, X)) // "used" has a lock row before the snapshot

	for _, name := range []string{"used", "fresh"} {
		tx := e.begin(e.db.DB, sql.LevelRepeatableRead)
		require.Zero(t, e.qcount(tx, `SELECT COUNT(*) FROM sqldlm_holders`), "the snapshot is taken")
		tok := e.grant(e.db.DB, name, b, X)
		e.release(e.db.DB, name, b, tok)
		audit := e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_audit`)

		req := rand.Int64()
		_, err := e.acquireTx(tx, dialect.AcquireParams{Name: name, LeaseID: a, RequestID: req, Mode: X})
		require.ErrorIs(t, err, dialect.ErrIsolation, name)
		require.ErrorContains(t, err, "READ COMMITTED")
		require.False(t, dialect.IsRetryable(err))

		require.Zero(t, e.qcount(tx, `SELECT COUNT(*) FROM sqldlm_holders`), "%s: the transaction is still usable", name)
		require.Equal(t, dialect.TxNotCommitted, e.outcome(a, req), "%s: the pending record was left alone, unlocked", name)
		require.NoError(t, tx.Commit())
		require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE name = ?`, name), name)
		require.Equal(t, audit, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_audit`), "%s: no audit row", name)
		require.Equal(t, int(tok), e.count(e.db.DB, `SELECT token FROM sqldlm_locks WHERE name = ?`, name), name)
	}

	// A snapshot taken by AcquireTx itself is fresh.
	tx := e.begin(e.db.DB, sql.LevelRepeatableRead)
	req := rand.Int64()
	res, err := e.acquireTx(tx, dialect.AcquireParams{Name: "used", LeaseID: a, RequestID: req, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	// An old snapshot is fine for a name nobody granted since.
	other := e.begin(e.db.DB, sql.LevelRepeatableRead)
	require.Zero(t, e.qcount(other, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = 0`))
	e.grant(e.db.DB, "elsewhere", b, X)
	res2, err := e.acquireTx(other, dialect.AcquireParams{Name: "untouched", LeaseID: a, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res2.Status)
	require.NoError(t, other.Commit())
	require.NoError(t, tx.Commit())
	require.Equal(t, dialect.TxCommitted, e.outcome(a, req))
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, res.Token))
}

// TestAcquireTxOldSnapshotOfOwnLease: an own lease that looks expired in a
// REPEATABLE READ snapshot older than the request's pending record (it was
// renewed since) gives ErrIsolation, not LeaseLost (which would make the
// client give its lease up); at READ COMMITTED the same request is granted,
// and a lease that really expired is lost.
func TestAcquireTxOldSnapshotOfOwnLease(t *testing.T) {
	e := newEnv(t)
	const ttl = time.Second
	a := e.lease(e.db.DB, "a", ttl)
	tx := e.begin(e.db.DB, sql.LevelRepeatableRead)
	var snapshotExpiry int64
	require.NoError(t, tx.QueryRowContext(e.ctx, `SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', expires_at)
		FROM sqldlm_leases WHERE id = ?`, a).Scan(&snapshotExpiry))
	for { // keep the lease alive past the expiry the snapshot shows
		ok, err := d.RenewLease(e.ctx, e.db.DB, a)
		require.NoError(t, err)
		require.True(t, ok)
		now, err := d.Now(e.ctx, e.db.DB)
		require.NoError(t, err)
		if now.UnixMicro() > snapshotExpiry+20_000 {
			break
		}
	}
	_, err := e.acquireTx(tx, dialect.AcquireParams{Name: "n", LeaseID: a, Mode: X})
	require.ErrorIs(t, err, dialect.ErrIsolation)
	require.NoError(t, tx.Rollback())

	ok, err := d.RenewLease(e.ctx, e.db.DB, a)
	require.NoError(t, err)
	require.True(t, ok)
	rc := e.begin(e.db.DB, sql.LevelReadCommitted)
	res, err := e.acquireTx(rc, dialect.AcquireParams{Name: "n", LeaseID: a, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	require.NoError(t, rc.Rollback())

	e.expire(ttl)
	rc = e.begin(e.db.DB, sql.LevelReadCommitted)
	res, err = e.acquireTx(rc, dialect.AcquireParams{Name: "n", LeaseID: a, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.LeaseLost, res.Status)
}

// TestAcquireTxVisibility: at READ COMMITTED a grant (with its takeover) is
// invisible to other connections until the commit, holds the name's row so
// that another grant of the name waits for the transaction, and is gone
// after a rollback, takeover included.
func TestAcquireTxVisibility(t *testing.T) {
	e := newEnv(t)
	const ttl = time.Second
	a, c := e.lease(e.db.DB, "a", time.Minute), e.lease(e.db.DB, "c", time.Minute)
	dead := e.lease(e.db.DB, "dead", ttl)
	old := e.grant(e.db.DB, "job", dead, X)
	e.expire(ttl)
	impatient := e.impatient()

	for _, commit := range []bool{false, true} {
		tx := e.begin(e.db.DB, sql.LevelReadCommitted)
		req := rand.Int64()
		res, err := e.acquireTx(tx, dialect.AcquireParams{Name: "job", LeaseID: a, RequestID: req, Mode: X, Payload: "p"})
		require.NoError(t, err)
		require.Equal(t, dialect.Granted, res.Status)
		require.Len(t, res.TookOver, 1)
		require.Equal(t, old, res.TookOver[0].Token)
		require.Equal(t, 1, e.qcount(tx, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, res.Token), "the transaction sees its hold")

		require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, res.Token), "others do not")
		require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, old), "nor the takeover")
		require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? AND broken_at IS NULL`, dead))
		locks, err := d.Locks(e.ctx, e.db.DB, &dialect.LocksFilter{})
		require.NoError(t, err)
		require.Len(t, locks, 1)
		require.Equal(t, dead, locks[0].Holders[0].LeaseID)
		_, err = d.Acquire(e.ctx, impatient, &dialect.AcquireParams{Name: "job", LeaseID: c, RequestID: rand.Int64(), Mode: X})
		require.ErrorIs(t, err, dialect.ErrLockTimeout, "another grant of the name waits for the transaction")

		if !commit {
			require.NoError(t, tx.Rollback())
			require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, res.Token))
			require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, old), "the takeover rolled back")
			require.Equal(t, 1, e.pending(a, req), "the pending record is back")
			continue
		}
		require.NoError(t, tx.Commit())
		require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ? AND payload = 'p'`, res.Token))
		require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, old))
		require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? AND broken_at IS NOT NULL`, dead))
		bl := e.acquire(e.db.DB, dialect.AcquireParams{Name: "job", LeaseID: c, Mode: S})
		require.Equal(t, dialect.Blocked, bl.Status)
		require.Equal(t, "a", bl.Blocker.Owner)
	}
}

// TestPendingOutcome: the record reads TxOpen while the granting
// transaction is open (without waiting for its lock), TxCommitted once it
// committed (or once the lease was deleted), and TxNotCommitted after a
// rollback or a refusal, which deletes the record.
func TestPendingOutcome(t *testing.T) {
	e := newEnv(t)
	a, c := e.lease(e.db.DB, "a", time.Minute), e.lease(e.db.DB, "c", time.Minute)

	tx := e.begin(e.db.DB, sql.LevelReadCommitted)
	req := rand.Int64()
	res, err := e.acquireTx(tx, dialect.AcquireParams{Name: "n", LeaseID: a, RequestID: req, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	start := time.Now()
	require.Equal(t, dialect.TxOpen, e.outcome(a, req))
	require.Equal(t, dialect.TxOpen, e.outcome(a, req))
	require.Less(t, time.Since(start), time.Second, "no lock wait")
	require.Equal(t, 1, e.pending(a, req), "the delete is not committed yet")
	require.NoError(t, tx.Commit())
	require.Equal(t, dialect.TxCommitted, e.outcome(a, req))
	require.Zero(t, e.pending(a, req))

	tx = e.begin(e.db.DB, sql.LevelReadCommitted)
	req = rand.Int64()
	res, err = e.acquireTx(tx, dialect.AcquireParams{Name: "m", LeaseID: a, RequestID: req, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	require.NoError(t, tx.Rollback())
	require.Equal(t, 1, e.pending(a, req))
	require.Equal(t, dialect.TxNotCommitted, e.outcome(a, req))
	require.Zero(t, e.pending(a, req), "TxNotCommitted deletes the record")

	// Refused: the record is left alone, and unlocked even while the
	// transaction is open.
	tx = e.begin(e.db.DB, sql.LevelReadCommitted)
	req = rand.Int64()
	res, err = e.acquireTx(tx, dialect.AcquireParams{Name: "n", LeaseID: c, RequestID: req, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Blocked, res.Status)
	require.Equal(t, "a", res.Blocker.Owner)
	require.Equal(t, 1, e.pending(c, req))
	require.Equal(t, dialect.TxNotCommitted, e.outcome(c, req))
	require.Zero(t, e.pending(c, req))
	require.NoError(t, tx.Commit())

	// A repeated request in a new transaction returns its hold and deletes
	// the new record too.
	tx = e.begin(e.db.DB, sql.LevelReadCommitted)
	require.NoError(t, d.CreatePending(e.ctx, e.db.DB, a, 77))
	first, err := d.AcquireTx(e.ctx, tx, &dialect.AcquireParams{Name: "r", LeaseID: a, RequestID: 77, Mode: X})
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	require.NoError(t, d.CreatePending(e.ctx, e.db.DB, a, 77))
	tx = e.begin(e.db.DB, sql.LevelReadCommitted)
	again, err := d.AcquireTx(e.ctx, tx, &dialect.AcquireParams{Name: "r", LeaseID: a, RequestID: 77, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, again.Status)
	require.Equal(t, first.Token, again.Token)
	require.Equal(t, dialect.TxOpen, e.outcome(a, 77))
	require.NoError(t, tx.Commit())
	require.Equal(t, dialect.TxCommitted, e.outcome(a, 77))
	err = d.CreatePending(e.ctx, e.db.DB, c, 5)
	require.NoError(t, err)
	require.ErrorIs(t, d.CreatePending(e.ctx, e.db.DB, c, 5), dialect.ErrUniqueViolation)

	// A deleted lease takes its records with it.
	_, err = d.DeleteLease(e.ctx, e.db.DB, c)
	require.NoError(t, err)
	require.Equal(t, dialect.TxCommitted, e.outcome(c, 5))

	_, err = d.AcquireTx(e.ctx, tx, &dialect.AcquireParams{Name: "q", LeaseID: a, RequestID: 1, Mode: X, Enqueue: true})
	require.Error(t, err, "AcquireTx does not queue")
}

// TestAcquireTxLeaseStaysRenewable: while a transaction that acquired (and
// took a dead holder over) is open, the own lease's row is not locked at all:
// its renewal, and even a NOWAIT lock of it, go through at once.
func TestAcquireTxLeaseStaysRenewable(t *testing.T) {
	e := newEnv(t)
	const ttl = time.Second
	a := e.lease(e.db.DB, "a", time.Minute)
	dead := e.lease(e.db.DB, "dead", ttl)
	e.grant(e.db.DB, "n", dead, X)
	e.expire(ttl)
	impatient := e.impatient()

	for _, level := range []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead} {
		name := fmt.Sprintf("n%d", level)
		if level == sql.LevelReadCommitted {
			name = "n" // with a takeover
		}
		tx := e.begin(e.db.DB, level)
		res, err := e.acquireTx(tx, dialect.AcquireParams{Name: name, LeaseID: a, Mode: X})
		require.NoError(t, err)
		require.Equal(t, dialect.Granted, res.Status)

		start := time.Now()
		ok, err := d.RenewLease(e.ctx, impatient, a)
		require.NoError(t, err, "the renewal does not wait for the caller's transaction")
		require.True(t, ok)
		require.Less(t, time.Since(start), 900*time.Millisecond)
		probe := e.begin(impatient, sql.LevelReadCommitted)
		require.Equal(t, 1, e.qcount(probe, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? FOR UPDATE NOWAIT`, a),
			"the own lease row is not locked")
		require.NoError(t, probe.Rollback())
		require.NoError(t, tx.Commit())
	}
}

// TestReapDoesNotWaitForAcquireTx: a lease that expires while a grant made
// in a caller's transaction is still open is left to a later pass (Reap
// does not wait for the transaction); once it commits, the lease is reaped
// with the hold and the pending records. Orphaned pending records go too,
// and Reap skips any row another transaction has locked.
func TestReapDoesNotWaitForAcquireTx(t *testing.T) {
	e := newEnv(t)
	const ttl = time.Second
	a := e.lease(e.db.DB, "a", ttl)
	tx := e.begin(e.db.DB, sql.LevelReadCommitted)
	req := rand.Int64()
	res, err := e.acquireTx(tx, dialect.AcquireParams{Name: "job", LeaseID: a, RequestID: req, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	e.expire(ttl)

	// Orphaned records: one free, one locked by another transaction.
	require.NoError(t, d.CreatePending(e.ctx, e.db.DB, 1, 1))
	require.NoError(t, d.CreatePending(e.ctx, e.db.DB, 1, 2))
	pin := e.begin(e.db.DB, sql.LevelReadCommitted)
	require.Equal(t, 1, e.qcount(pin, `SELECT COUNT(*) FROM sqldlm_pending WHERE lease_id = 1 AND request_id = 2 FOR UPDATE`))

	impatient := e.impatient()
	reap, err := d.Reap(e.ctx, impatient, 100, 0)
	require.NoError(t, err, "reap does not wait")
	require.Zero(t, reap.Leases)
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ?`, a))
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_pending WHERE lease_id = 1`), "the free orphan is gone")
	require.Equal(t, dialect.TxOpen, e.outcome(1, 2))

	require.NoError(t, tx.Commit())
	require.NoError(t, pin.Commit())
	require.NoError(t, d.CreatePending(e.ctx, e.db.DB, a, 99))
	reap, err = d.Reap(e.ctx, impatient, 100, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, reap.Leases)
	require.Equal(t, 1, reap.Holds)
	require.Equal(t, []string{"job"}, reap.Freed)
	require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_pending`), "the reaped lease's and the orphans' records")
}

// auditRow is the part of an audit entry these tests compare.
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
	for i, r := range log {
		out[i] = auditRow{r.Event, r.Name, r.Owner, r.LeaseID, r.Token, r.Mode, r.Payload, r.Detail}
	}
	return out
}

// TestAuditRows: the rows of every event, with their exact details, in the
// order written: a takeover of a dead lease's two holds of the name and of
// an orphaned hold (owner ”) before the grant, an upgrade keeping its
// payload, a downgrade, releases in and out of transactions (at REPEATABLE
// READ too), an abandoned request, a closed lease, a break with a hold of
// another name, an expiry, and a grant in a transaction that writes its
// rows only if it commits. Times are UTC by the server's clock, even on a
// connection with another time zone.
func TestAuditRows(t *testing.T) {
	e := newEnv(t)
	e.setAudit(true, time.Hour)
	odd := e.pool(url.Values{"time_zone": {"'-07:00'"}})
	before, err := d.Now(e.ctx, e.db.DB)
	require.NoError(t, err)
	const ttl = time.Second // carol's lease: three grants must fit in it, on a loaded machine
	alice, bob := e.lease(odd, "alice", time.Minute), e.lease(odd, "bob", time.Minute)
	var want []auditRow

	// Takeover: a dead lease with a shared and an exclusive hold of the
	// name and a hold of another name, and a hold whose lease row is gone.
	carol := e.lease(odd, "carol", ttl)
	c1 := e.acquire(odd, dialect.AcquireParams{Name: "t", LeaseID: carol, Mode: S, Payload: "c1"}).Token
	c2 := e.acquire(odd, dialect.AcquireParams{Name: "t", LeaseID: carol, Mode: S, Payload: "c2"}).Token
	c3 := e.grant(odd, "other", carol, X)
	_, err = e.db.ExecContext(e.ctx, `UPDATE sqldlm_holders SET mode = 'X' WHERE token = ?`, c2)
	require.NoError(t, err)
	ghost := rand.Int64N(1 << 40) // lower than the random ids, so taken over first
	_, err = e.db.ExecContext(e.ctx, `INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
		VALUES ('t', ?, 1, 'S', UTC_TIMESTAMP(6), 'g')`, ghost)
	require.NoError(t, err)
	g := int64(e.count(e.db.DB, `SELECT token FROM sqldlm_holders WHERE lease_id = ?`, ghost))
	want = append(want,
		auditRow{dialect.AuditGrant, "t", "carol", carol, c1, S, "c1", ""},
		auditRow{dialect.AuditGrant, "t", "carol", carol, c2, S, "c2", ""},
		auditRow{dialect.AuditGrant, "other", "carol", carol, c3, X, "", ""})
	e.expire(ttl)
	taken := e.acquire(odd, dialect.AcquireParams{Name: "t", LeaseID: bob, Mode: X, Payload: "new"})
	require.Equal(t, dialect.Granted, taken.Status)
	require.Len(t, taken.TookOver, 3)
	require.Equal(t, []int64{g, c1, c2}, []int64{taken.TookOver[0].Token, taken.TookOver[1].Token, taken.TookOver[2].Token})
	want = append(want,
		auditRow{dialect.AuditTakeover, "t", "", ghost, g, S, "g", "by bob"},
		auditRow{dialect.AuditTakeover, "t", "carol", carol, c1, S, "c1", "by bob"},
		auditRow{dialect.AuditTakeover, "t", "carol", carol, c2, X, "c2", "by bob"},
		auditRow{dialect.AuditGrant, "t", "bob", bob, taken.Token, X, "new", ""})

	// Upgrade (keeping the shared hold's payload), downgrade.
	sh := e.acquire(odd, dialect.AcquireParams{Name: "u", LeaseID: alice, Mode: S, Payload: "keep"}).Token
	up := e.acquire(odd, dialect.AcquireParams{Name: "u", LeaseID: alice, Mode: X, UpgradeToken: sh})
	require.Equal(t, dialect.Granted, up.Status)
	ok, err := d.Downgrade(e.ctx, odd, &dialect.HoldRef{Name: "u", LeaseID: alice, Token: up.Token})
	require.NoError(t, err)
	require.True(t, ok)
	want = append(want,
		auditRow{dialect.AuditGrant, "u", "alice", alice, sh, S, "keep", ""},
		auditRow{dialect.AuditUpgrade, "u", "alice", alice, up.Token, X, "keep", fmt.Sprintf("from token %d", sh)},
		auditRow{dialect.AuditDowngrade, "u", "alice", alice, up.Token, S, "keep", ""})

	// Releases: plain, in a READ COMMITTED and a REPEATABLE READ transaction
	// (a rolled-back one writes nothing), abandoned.
	r1 := e.grant(odd, "r1", alice, X)
	e.release(odd, "r1", alice, r1)
	want = append(want, auditRow{dialect.AuditGrant, "r1", "alice", alice, r1, X, "", ""},
		auditRow{dialect.AuditRelease, "r1", "alice", alice, r1, X, "", ""})
	for _, level := range []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead} {
		tok := e.grant(odd, "r2", alice, S)
		want = append(want, auditRow{dialect.AuditGrant, "r2", "alice", alice, tok, S, "", ""})
		for _, commit := range []bool{false, true} {
			tx := e.begin(odd, level)
			require.Zero(t, e.qcount(tx, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = 0`))
			ok, err := d.ReleaseTx(e.ctx, odd, tx, &dialect.HoldRef{Name: "r2", LeaseID: alice, Token: tok})
			require.NoError(t, err)
			require.True(t, ok)
			if commit {
				require.NoError(t, tx.Commit())
			} else {
				require.NoError(t, tx.Rollback())
			}
		}
		want = append(want, auditRow{dialect.AuditRelease, "r2", "alice", alice, tok, S, "", ""})
	}
	req := rand.Int64()
	ab := e.acquire(odd, dialect.AcquireParams{Name: "ab", LeaseID: alice, RequestID: req, Mode: X, Payload: "x"})
	res, err := d.Abandon(e.ctx, odd, &dialect.AbandonParams{Name: "ab", LeaseID: alice, RequestID: req})
	require.NoError(t, err)
	require.Equal(t, []string{"ab"}, res.Freed)
	want = append(want, auditRow{dialect.AuditGrant, "ab", "alice", alice, ab.Token, X, "x", ""},
		auditRow{dialect.AuditRelease, "ab", "alice", alice, ab.Token, X, "x", "abandoned"})

	// Break: rows for the broken name and the lease's other holds.
	dave := e.lease(odd, "dave", time.Minute)
	d1, d2 := e.grant(odd, "b1", dave, X), e.grant(odd, "b2", dave, S)
	broken, err := d.Break(e.ctx, odd, "b1", "")
	require.NoError(t, err)
	require.Len(t, broken, 1)
	want = append(want, auditRow{dialect.AuditGrant, "b1", "dave", dave, d1, X, "", ""},
		auditRow{dialect.AuditGrant, "b2", "dave", dave, d2, S, "", ""},
		auditRow{dialect.AuditBreak, "b1", "dave", dave, d1, X, "", ""},
		auditRow{dialect.AuditBreak, "b2", "dave", dave, d2, S, "", "with b1"})

	// Reap: carol's remaining hold and dave's two expire.
	reaped, err := d.Reap(e.ctx, odd, 100, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 3, reaped.Holds)
	require.Equal(t, 2, reaped.Leases)
	// Leases are reaped in expires_at order: carol's first.
	want = append(want, auditRow{dialect.AuditExpire, "other", "carol", carol, c3, X, "", ""},
		auditRow{dialect.AuditExpire, "b1", "dave", dave, d1, X, "", ""},
		auditRow{dialect.AuditExpire, "b2", "dave", dave, d2, S, "", ""})

	// A grant in a transaction, with a takeover: rows only if it commits.
	erin := e.lease(odd, "erin", ttl)
	e1 := e.acquire(odd, dialect.AcquireParams{Name: "tx", LeaseID: erin, Mode: X, Payload: "e"}).Token
	want = append(want, auditRow{dialect.AuditGrant, "tx", "erin", erin, e1, X, "e", ""})
	e.expire(ttl)
	for _, commit := range []bool{false, true} {
		tx := e.begin(odd, sql.LevelReadCommitted)
		got, err := e.acquireTx(tx, dialect.AcquireParams{Name: "tx", LeaseID: alice, Mode: X, Payload: "in tx"})
		require.NoError(t, err)
		require.Equal(t, dialect.Granted, got.Status)
		require.Len(t, got.TookOver, 1)
		var tz string
		require.NoError(t, tx.QueryRowContext(e.ctx, `SELECT @@session.time_zone`).Scan(&tz))
		require.Equal(t, "-07:00", tz, "AcquireTx restores the time zone")
		if commit {
			require.NoError(t, tx.Commit())
			want = append(want, auditRow{dialect.AuditTakeover, "tx", "erin", erin, e1, X, "e", "by alice"},
				auditRow{dialect.AuditGrant, "tx", "alice", alice, got.Token, X, "in tx", ""})
		} else {
			require.NoError(t, tx.Rollback())
		}
	}

	// Closing a lease releases its holds.
	_, err = d.DeleteLease(e.ctx, odd, bob)
	require.NoError(t, err)
	want = append(want, auditRow{dialect.AuditRelease, "t", "bob", bob, taken.Token, X, "new", "lease closed"})

	log := e.auditLog(dialect.AuditFilter{})
	require.Equal(t, want, auditRows(log))
	after, err := d.Now(e.ctx, e.db.DB)
	require.NoError(t, err)
	for i, r := range log {
		require.Equal(t, time.UTC, r.At.Location())
		require.False(t, r.At.Before(before), "row %d at %v, before %v", i, r.At, before)
		require.False(t, r.At.After(after), "row %d at %v, after %v", i, r.At, after)
		if i > 0 {
			require.Greater(t, r.ID, log[i-1].ID)
			require.False(t, r.At.Before(log[i-1].At))
		}
	}
	// Names are filtered byte by byte.
	require.Len(t, e.auditLog(dialect.AuditFilter{Name: "T"}), 0)
	require.Len(t, e.auditLog(dialect.AuditFilter{Name: "t "}), 0)
	require.Len(t, e.auditLog(dialect.AuditFilter{Name: "t"}), 7)
	last := e.auditLog(dialect.AuditFilter{Name: "t", Limit: 1})
	require.Equal(t, []auditRow{want[len(want)-1]}, auditRows(last))
}

// TestAuditDisabledWritesNothing: with the setting off (the migration's
// default), no operation writes an audit row.
func TestAuditDisabledWritesNothing(t *testing.T) {
	e := newEnv(t)
	s, err := d.AuditSettings(e.ctx, e.db.DB)
	require.NoError(t, err)
	require.Equal(t, dialect.AuditSettings{Enabled: false, Retention: 7 * 24 * time.Hour}, *s)
	const ttl = time.Second
	a, b := e.lease(e.db.DB, "a", time.Minute), e.lease(e.db.DB, "b", time.Minute)
	dead := e.lease(e.db.DB, "dead", ttl)
	e.grant(e.db.DB, "t", dead, X)
	e.grant(e.db.DB, "other", dead, X)
	e.expire(ttl)
	e.grant(e.db.DB, "t", a, X) // takeover

	sh := e.grant(e.db.DB, "u", a, S)
	up := e.acquire(e.db.DB, dialect.AcquireParams{Name: "u", LeaseID: a, Mode: X, UpgradeToken: sh})
	require.Equal(t, dialect.Granted, up.Status)
	ok, err := d.Downgrade(e.ctx, e.db.DB, &dialect.HoldRef{Name: "u", LeaseID: a, Token: up.Token})
	require.NoError(t, err)
	require.True(t, ok)
	e.release(e.db.DB, "u", a, up.Token)
	tok := e.grant(e.db.DB, "r", a, X)
	tx := e.begin(e.db.DB, sql.LevelRepeatableRead)
	ok, err = d.ReleaseTx(e.ctx, e.db.DB, tx, &dialect.HoldRef{Name: "r", LeaseID: a, Token: tok})
	require.NoError(t, err)
	require.True(t, ok)
	require.NoError(t, tx.Commit())
	req := rand.Int64()
	e.acquire(e.db.DB, dialect.AcquireParams{Name: "ab", LeaseID: a, RequestID: req, Mode: X})
	_, err = d.Abandon(e.ctx, e.db.DB, &dialect.AbandonParams{Name: "ab", LeaseID: a, RequestID: req})
	require.NoError(t, err)
	tx = e.begin(e.db.DB, sql.LevelReadCommitted)
	res, err := e.acquireTx(tx, dialect.AcquireParams{Name: "tx", LeaseID: a, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	require.NoError(t, tx.Commit())
	e.grant(e.db.DB, "b", b, X)
	_, err = d.Break(e.ctx, e.db.DB, "b", "")
	require.NoError(t, err)
	reap, err := d.Reap(e.ctx, e.db.DB, 100, 0)
	require.NoError(t, err)
	require.Equal(t, 2, reap.Holds, "other and b expired")
	_, err = d.DeleteLease(e.ctx, e.db.DB, a)
	require.NoError(t, err)

	require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_audit`))
	require.Empty(t, e.auditLog(dialect.AuditFilter{}))
}

// TestReapPrunesAudit: Reap deletes up to its limit of the audit rows older
// than the retention, oldest first, whether or not audit is on, reports
// them in AuditRows, keeps newer rows, and skips (without waiting) an old
// row that another transaction has locked.
func TestReapPrunesAudit(t *testing.T) {
	e := newEnv(t)
	insert := func(q dialect.Querier, age time.Duration, name string) {
		t.Helper()
		_, err := q.ExecContext(e.ctx, `INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode)
			VALUES (UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND, 'grant', ?, 'o', 1, 1, 'X')`, age.Microseconds(), name)
		require.NoError(t, err)
	}
	for i := range 5 {
		insert(e.db.DB, 48*time.Hour+time.Duration(i)*time.Minute, fmt.Sprintf("old%d", i))
	}
	insert(e.db.DB, time.Minute, "recent")
	locked := e.begin(e.db.DB, sql.LevelReadCommitted)
	insert(locked, 72*time.Hour, "uncommitted")

	impatient := e.impatient()
	res, err := d.Reap(e.ctx, impatient, 3, time.Hour)
	require.NoError(t, err)
	require.Zero(t, res.AuditRows, "the default retention is 7 days")

	require.NoError(t, d.SetAuditSettings(e.ctx, e.db.DB, &dialect.AuditSettings{Enabled: false, Retention: 24 * time.Hour}))
	res, err = d.Reap(e.ctx, impatient, 3, time.Hour)
	require.NoError(t, err, "the locked row is not waited for")
	require.Equal(t, 3, res.AuditRows)
	var left []string
	for _, r := range e.auditLog(dialect.AuditFilter{}) {
		left = append(left, r.Name)
	}
	require.Equal(t, []string{"old0", "old1", "recent"}, left, "the oldest went first")
	res, err = d.Reap(e.ctx, impatient, 3, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 2, res.AuditRows)
	require.NoError(t, locked.Commit())
	res, err = d.Reap(e.ctx, impatient, 3, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, res.AuditRows, "the row committed since")
	require.Len(t, e.auditLog(dialect.AuditFilter{}), 1)

	require.ErrorContains(t, d.SetAuditSettings(e.ctx, e.db.DB, &dialect.AuditSettings{Retention: 999 * time.Millisecond}), "at least 1s")
	_, err = e.db.ExecContext(e.ctx, `UPDATE sqldlm_settings SET audit_retention_us = 999999`)
	require.Error(t, err, "the table's CHECK holds too")
	_, err = e.db.ExecContext(e.ctx, `INSERT INTO sqldlm_settings (id) VALUES (2)`)
	require.Error(t, err, "one row")
}

// TestMigrateDownRestoresVersion2: after up to the latest version and down
// to 2, the routines, tables and views are exactly those of a schema
// migrated to 2 only.
func TestMigrateDownRestoresVersion2(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want, down := migratedDown(t, ctx, 2)
	require.Contains(t, want, "sqldlm_leases_view")
	require.Equal(t, want, schemaOf(t, ctx, down))

	// And the version 2 routines work: Reap returns its four counts.
	var cols []string
	rows, err := down.QueryContext(ctx, `CALL sqldlm_reap(10, 0)`)
	require.NoError(t, err)
	cols, err = rows.Columns()
	require.NoError(t, err)
	require.NoError(t, rows.Close())
	require.Equal(t, []string{"leases", "holds", "waiters", "idle_locks"}, cols)
	_, err = migrations.Up(ctx, down, d)
	require.NoError(t, err, "and up again")
}

// migratedDown returns the schema (schemaOf) of a database migrated up to
// version only, and another database migrated up to the latest version and
// then down to version.
func migratedDown(t *testing.T, ctx context.Context, version int64) ([]string, *sql.DB) {
	t.Helper()
	only := testdb.Open(t, testdb.MySQL)
	p, err := migrations.NewProvider(only.DB, d)
	require.NoError(t, err)
	_, err = p.UpTo(ctx, version)
	require.NoError(t, err)
	down := testdb.OpenMigrated(t, testdb.MySQL)
	_, err = migrations.DownTo(ctx, down.DB, d, version)
	require.NoError(t, err)
	v, err := migrations.Current(ctx, down.DB, d)
	require.NoError(t, err)
	require.Equal(t, version, v)
	return schemaOf(t, ctx, only.DB), down.DB
}

// schemaOf lists db's routines (with their sql_mode and text), their
// parameters, and its tables and views.
func schemaOf(t *testing.T, ctx context.Context, db *sql.DB) []string {
	t.Helper()
	var out []string
	for _, q := range []string{
		`SELECT CONCAT(ROUTINE_NAME, ' ', SQL_MODE, ' ', ROUTINE_DEFINITION) FROM information_schema.ROUTINES
		  WHERE ROUTINE_SCHEMA = DATABASE() ORDER BY ROUTINE_NAME`,
		`SELECT CONCAT(SPECIFIC_NAME, ' ', ORDINAL_POSITION, ' ', COALESCE(PARAMETER_NAME, ''), ' ', DTD_IDENTIFIER)
		   FROM information_schema.PARAMETERS WHERE SPECIFIC_SCHEMA = DATABASE() ORDER BY SPECIFIC_NAME, ORDINAL_POSITION`,
		`SELECT TABLE_NAME FROM information_schema.TABLES
		  WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> 'sqldlm_schema_version' ORDER BY TABLE_NAME`,
	} {
		rows, err := db.QueryContext(ctx, q)
		require.NoError(t, err)
		for rows.Next() {
			var s string
			require.NoError(t, rows.Scan(&s))
			out = append(out, s)
		}
		require.NoError(t, rows.Err())
		require.NoError(t, rows.Close())
	}
	return out
}
