package dialecttest

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
)

func exerciseTxAndAudit(t *testing.T, h Harness) {
	runSorted(t, h, map[string]func(t *testing.T, b *lockerBundle){
		"AcquireTxCommit":              testAcquireTxCommit,
		"AcquireTxRollback":            testAcquireTxRollback,
		"AcquireTxBlocked":             testAcquireTxBlocked,
		"AcquireTxTakeover":            testAcquireTxTakeover,
		"AcquireTxKeepsLeaseRenewable": testAcquireTxRenewable,
		"AuditSettings":                testAuditSettings,
		"AuditEvents":                  testAuditEvents,
		"AuditDisabledWritesNothing":   testAuditDisabled,
		"AuditFilters":                 testAuditFilters,
		"AuditPrunedAfterRetention":    testAuditPrune,
	})
}

// beginRC begins a READ COMMITTED transaction, the level AcquireTx asks for.
func (b *lockerBundle) beginRC() *sql.Tx {
	b.t.Helper()
	tx, err := b.db.BeginTx(b.ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	require.NoError(b.t, err)
	b.t.Cleanup(func() { _ = tx.Rollback() })
	return tx
}

// acquireTx records a pending request and makes it in tx.
func (b *lockerBundle) acquireTx(tx *sql.Tx, p dialect.AcquireParams) *dialect.AcquireResult {
	b.t.Helper()
	if p.RequestID == 0 {
		p.RequestID = rand.Int64()
	}
	require.NoError(b.t, b.d.CreatePending(b.ctx, b.db, p.LeaseID, p.RequestID))
	res, err := b.d.AcquireTx(b.ctx, tx, &p)
	require.NoError(b.t, err)
	return res
}

// pendingRecords counts sqldlm_pending rows (SQLite has no such table).
func (b *lockerBundle) pendingRecords() int {
	if b.d.Name() == "sqlite" {
		return 0
	}
	return b.count(`SELECT COUNT(*) FROM sqldlm_pending`)
}

func (b *lockerBundle) outcome(leaseID, requestID int64) dialect.TxOutcome {
	b.t.Helper()
	out, err := b.d.PendingOutcome(b.ctx, b.db, leaseID, requestID)
	require.NoError(b.t, err)
	return out
}

// countArgs is count with ? placeholders, rewritten to $n for PostgreSQL.
func (b *lockerBundle) countArgs(query string, args ...any) int {
	b.t.Helper()
	if b.d.Name() == "postgres" {
		for i := range args {
			query = strings.Replace(query, "?", fmt.Sprintf("$%d", i+1), 1)
		}
	}
	return b.count(query, args...)
}

// testAcquireTxCommit: a grant made in a transaction is invisible to
// others until the commit, PendingOutcome follows the transaction, and after
// the commit the hold is an ordinary one.
func testAcquireTxCommit(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
	tx := b.beginRC()
	req := rand.Int64()
	res := b.acquireTx(tx, dialect.AcquireParams{Name: "job/1", LeaseID: a, RequestID: req, Mode: dialect.Exclusive, Payload: "enqueue"})
	require.Equal(t, dialect.Granted, res.Status)
	require.Positive(t, res.Token)
	require.Equal(t, dialect.TxOpen, b.outcome(a, req))
	require.Zero(t, b.countArgs(`SELECT COUNT(*) FROM `+b.holds+` WHERE name = ?`, "job/1"), "not visible before the commit")

	require.NoError(t, tx.Commit())
	require.Equal(t, dialect.TxCommitted, b.outcome(a, req))
	require.Zero(t, b.pendingRecords())
	bl := b.blocked(dialect.AcquireParams{Name: "job/1", LeaseID: c, Mode: dialect.Shared})
	require.Equal(t, "a", bl.Owner)
	require.Equal(t, "enqueue", holderPayload(b, "job/1"))
	// A repeat of the request returns the hold it obtained.
	again := b.acquire(dialect.AcquireParams{Name: "job/1", LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, again.Status)
	require.Equal(t, res.Token, again.Token)
	require.True(t, b.release("job/1", a, res.Token))
	b.grant("job/1", c, dialect.Exclusive)
}

// testAcquireTxRollback: a rolled-back grant never existed, and
// PendingOutcome says so and removes the record.
func testAcquireTxRollback(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
	tx := b.beginRC()
	req := rand.Int64()
	res := b.acquireTx(tx, dialect.AcquireParams{Name: "job/2", LeaseID: a, RequestID: req, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, res.Status)
	require.NoError(t, tx.Rollback())
	require.Equal(t, dialect.TxNotCommitted, b.outcome(a, req))
	require.Zero(t, b.pendingRecords(), "the record is deleted")
	require.Zero(t, b.countArgs(`SELECT COUNT(*) FROM `+b.holds+` WHERE name = ?`, "job/2"))
	tok := b.grant("job/2", c, dialect.Exclusive)
	if b.d.Name() == "sqlite" {
		// SQLite's AUTOINCREMENT counter rolls back with the transaction:
		// the token of a grant that never committed is drawn again.
		require.GreaterOrEqual(t, tok, res.Token)
	} else {
		require.Greater(t, tok, res.Token, "sequences do not roll back: a rolled-back grant's token is never reused")
	}
}

// testAcquireTxBlocked: a conflicting hold refuses the request without
// queueing it, and the record reads as not committed at once.
func testAcquireTxBlocked(t *testing.T, b *lockerBundle) {
	a, c := b.lease("a", time.Minute), b.lease("c", time.Minute)
	b.grant("job/3", c, dialect.Exclusive)
	tx := b.beginRC()
	req := rand.Int64()
	res := b.acquireTx(tx, dialect.AcquireParams{Name: "job/3", LeaseID: a, RequestID: req, Mode: dialect.Shared})
	require.Equal(t, dialect.Blocked, res.Status)
	require.NotNil(t, res.Blocker)
	require.Equal(t, "c", res.Blocker.Owner)
	require.NoError(t, tx.Rollback())
	require.Equal(t, dialect.TxNotCommitted, b.outcome(a, req))
	require.Zero(t, b.count(`SELECT COUNT(*) FROM sqldlm_waiters`), "a refused AcquireTx does not queue")
	require.Zero(t, b.pendingRecords())
}

// testAcquireTxTakeover: a grant in a transaction takes a dead holder over
// and reports it.
func testAcquireTxTakeover(t *testing.T, b *lockerBundle) {
	a := b.lease("a", time.Minute)
	dead := b.lease("dead", short)
	old := b.acquire(dialect.AcquireParams{Name: "job/4", LeaseID: dead, Mode: dialect.Exclusive, Payload: "step 2"})
	require.Equal(t, dialect.Granted, old.Status)
	b.expire(short)
	tx := b.beginRC()
	res := b.acquireTx(tx, dialect.AcquireParams{Name: "job/4", LeaseID: a, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, res.Status)
	require.Len(t, res.TookOver, 1)
	require.Equal(t, "dead", res.TookOver[0].Owner)
	require.Equal(t, old.Token, res.TookOver[0].Token)
	require.Equal(t, "step 2", res.TookOver[0].Payload)
	require.NoError(t, tx.Commit())
	ok, err := b.d.RenewLease(b.ctx, b.db, dead)
	require.NoError(t, err)
	require.False(t, ok, "the taken-over lease stays dead")
}

// testAcquireTxRenewable: the own lease renews while the transaction that
// acquired is still open. SQLite is the exception: any open write
// transaction holds the database's only write lock.
func testAcquireTxRenewable(t *testing.T, b *lockerBundle) {
	if b.d.Name() == "sqlite" {
		t.Skip("SQLite: an open write transaction blocks every writer, renewals included")
	}
	a := b.lease("a", time.Minute)
	tx := b.beginRC()
	res := b.acquireTx(tx, dialect.AcquireParams{Name: "job/5", LeaseID: a, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Granted, res.Status)
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	ok, err := b.d.RenewLease(ctx, b.db, a)
	require.NoError(t, err, "the renewal must not wait for the caller's transaction")
	require.True(t, ok)
	require.NoError(t, tx.Commit())
}

func testAuditSettings(t *testing.T, b *lockerBundle) {
	s, err := b.d.AuditSettings(b.ctx, b.db)
	require.NoError(t, err)
	require.Equal(t, dialect.AuditSettings{Enabled: false, Retention: 7 * 24 * time.Hour}, *s)
	require.NoError(t, b.d.SetAuditSettings(b.ctx, b.db, &dialect.AuditSettings{Enabled: true, Retention: time.Hour}))
	s, err = b.d.AuditSettings(b.ctx, b.db)
	require.NoError(t, err)
	require.Equal(t, dialect.AuditSettings{Enabled: true, Retention: time.Hour}, *s)
	err = b.d.SetAuditSettings(b.ctx, b.db, &dialect.AuditSettings{Enabled: true, Retention: time.Millisecond})
	require.ErrorContains(t, err, "retention")
}

func (b *lockerBundle) enableAudit(retention time.Duration) {
	b.t.Helper()
	require.NoError(b.t, b.d.SetAuditSettings(b.ctx, b.db, &dialect.AuditSettings{Enabled: true, Retention: retention}))
}

func (b *lockerBundle) auditLog(f dialect.AuditFilter) []dialect.AuditEntry {
	b.t.Helper()
	log, err := b.d.AuditLog(b.ctx, b.db, &f)
	require.NoError(b.t, err)
	return log
}

// row is the part of an audit entry the tests compare.
type row struct {
	Event  dialect.AuditEvent
	Name   string
	Owner  string
	Token  int64
	Mode   dialect.Mode
	Detail string
}

func rowsOf(log []dialect.AuditEntry) []row {
	out := make([]row, len(log))
	for i, e := range log {
		out[i] = row{e.Event, e.Name, e.Owner, e.Token, e.Mode, e.Detail}
	}
	return out
}

// testAuditEvents: every kind of change writes its rows, in order, with the
// holder's identity and the server's time.
func testAuditEvents(t *testing.T, b *lockerBundle) {
	b.enableAudit(time.Hour)
	before, err := b.d.Now(b.ctx, b.db)
	require.NoError(t, err)
	X, S := dialect.Exclusive, dialect.Shared
	alice, bob := b.lease("alice", time.Minute), b.lease("bob", time.Minute)
	var want []row

	g := b.acquire(dialect.AcquireParams{Name: "n1", LeaseID: alice, Mode: X, Payload: "job"})
	require.True(t, b.release("n1", alice, g.Token))
	want = append(want, row{dialect.AuditGrant, "n1", "alice", g.Token, X, ""}, row{dialect.AuditRelease, "n1", "alice", g.Token, X, ""})

	sh := b.grant("n2", alice, S)
	up := b.acquire(dialect.AcquireParams{Name: "n2", LeaseID: alice, Mode: X, UpgradeToken: sh})
	require.Equal(t, dialect.Granted, up.Status)
	ok, err := b.d.Downgrade(b.ctx, b.db, &dialect.HoldRef{Name: "n2", LeaseID: alice, Token: up.Token})
	require.NoError(t, err)
	require.True(t, ok)
	want = append(want, row{dialect.AuditGrant, "n2", "alice", sh, S, ""},
		row{dialect.AuditUpgrade, "n2", "alice", up.Token, X, fmt.Sprintf("from token %d", sh)},
		row{dialect.AuditDowngrade, "n2", "alice", up.Token, S, ""})

	carol := b.lease("carol", short)
	c3, c4 := b.grant("n3", carol, X), b.grant("n4", carol, X)
	b.expire(short)
	taken := b.grant("n3", bob, X)
	want = append(want, row{dialect.AuditGrant, "n3", "carol", c3, X, ""}, row{dialect.AuditGrant, "n4", "carol", c4, X, ""},
		row{dialect.AuditTakeover, "n3", "carol", c3, X, "by bob"}, row{dialect.AuditGrant, "n3", "bob", taken, X, ""})

	res, err := b.d.Reap(b.ctx, b.db, 100, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, res.Holds)
	want = append(want, row{dialect.AuditExpire, "n4", "carol", c4, X, ""})

	dave := b.lease("dave", time.Minute)
	d5, d6 := b.grant("n5", dave, X), b.grant("n6", dave, S)
	_, err = b.d.Break(b.ctx, b.db, "n5", "")
	require.NoError(t, err)
	want = append(want, row{dialect.AuditGrant, "n5", "dave", d5, X, ""}, row{dialect.AuditGrant, "n6", "dave", d6, S, ""},
		row{dialect.AuditBreak, "n5", "dave", d5, X, ""}, row{dialect.AuditBreak, "n6", "dave", d6, S, "with n5"})

	req := rand.Int64()
	ab := b.acquire(dialect.AcquireParams{Name: "n7", LeaseID: alice, RequestID: req, Mode: X})
	_, err = b.d.Abandon(b.ctx, b.db, &dialect.AbandonParams{Name: "n7", LeaseID: alice, RequestID: req})
	require.NoError(t, err)
	want = append(want, row{dialect.AuditGrant, "n7", "alice", ab.Token, X, ""}, row{dialect.AuditRelease, "n7", "alice", ab.Token, X, "abandoned"})

	n8 := b.grant("n8", alice, X)
	for _, commit := range []bool{false, true} {
		tx, err := b.db.BeginTx(b.ctx, nil)
		require.NoError(t, err)
		ok, err := b.d.ReleaseTx(b.ctx, b.db, tx, &dialect.HoldRef{Name: "n8", LeaseID: alice, Token: n8})
		require.NoError(t, err)
		require.True(t, ok)
		if commit {
			require.NoError(t, tx.Commit())
		} else {
			require.NoError(t, tx.Rollback())
		}
	}
	want = append(want, row{dialect.AuditGrant, "n8", "alice", n8, X, ""}, row{dialect.AuditRelease, "n8", "alice", n8, X, ""})

	for _, commit := range []bool{false, true} {
		tx := b.beginRC()
		res := b.acquireTx(tx, dialect.AcquireParams{Name: "n9", LeaseID: alice, Mode: S})
		require.Equal(t, dialect.Granted, res.Status)
		if commit {
			require.NoError(t, tx.Commit())
			want = append(want, row{dialect.AuditGrant, "n9", "alice", res.Token, S, ""})
		} else {
			require.NoError(t, tx.Rollback())
		}
	}

	_, err = b.d.DeleteLease(b.ctx, b.db, bob)
	require.NoError(t, err)
	want = append(want, row{dialect.AuditRelease, "n3", "bob", taken, X, "lease closed"})

	log := b.auditLog(dialect.AuditFilter{})
	require.Equal(t, want, rowsOf(log))
	after, err := b.d.Now(b.ctx, b.db)
	require.NoError(t, err)
	for i, e := range log {
		require.Equal(t, time.UTC, e.At.Location())
		require.False(t, e.At.Before(before.Add(-b.d.TimePrecision())), "row %d at %v before the test began at %v", i, e.At, before)
		require.False(t, e.At.After(after), "row %d at %v after the test ended at %v", i, e.At, after)
		if i > 0 {
			require.Greater(t, e.ID, log[i-1].ID)
			require.False(t, e.At.Before(log[i-1].At), "rows are written in time order")
		}
	}
	require.Equal(t, "job", log[0].Payload)
	require.Equal(t, alice, log[0].LeaseID)
}

func testAuditDisabled(t *testing.T, b *lockerBundle) {
	a := b.lease("a", time.Minute)
	tok := b.grant("n", a, dialect.Exclusive)
	require.True(t, b.release("n", a, tok))
	_, err := b.d.Reap(b.ctx, b.db, 100, 0)
	require.NoError(t, err)
	require.Empty(t, b.auditLog(dialect.AuditFilter{}))
}

func testAuditFilters(t *testing.T, b *lockerBundle) {
	b.enableAudit(time.Hour)
	a := b.lease("a", time.Minute)
	for i := range 3 {
		for _, name := range []string{"node/1", "node/2"} {
			tok := b.grant(name, a, dialect.Exclusive)
			require.True(t, b.release(name, a, tok), "round %d", i)
		}
	}
	require.Len(t, b.auditLog(dialect.AuditFilter{}), 12)
	one := b.auditLog(dialect.AuditFilter{Name: "node/1"})
	require.Len(t, one, 6)
	for _, e := range one {
		require.Equal(t, "node/1", e.Name)
	}
	last := b.auditLog(dialect.AuditFilter{Name: "node/2", Limit: 2})
	require.Equal(t, []dialect.AuditEvent{dialect.AuditGrant, dialect.AuditRelease}, []dialect.AuditEvent{last[0].Event, last[1].Event})
	all := b.auditLog(dialect.AuditFilter{})
	require.Equal(t, all[len(all)-1].ID, last[1].ID, "Limit keeps the newest rows")
	require.Len(t, b.auditLog(dialect.AuditFilter{Since: time.Hour}), 12)
	b.expire(short)
	require.Empty(t, b.auditLog(dialect.AuditFilter{Since: short / 2}), "Since counts back from the server's now")
}

func testAuditPrune(t *testing.T, b *lockerBundle) {
	b.enableAudit(time.Second)
	a := b.lease("a", time.Minute)
	tok := b.grant("n", a, dialect.Exclusive)
	require.True(t, b.release("n", a, tok))
	res, err := b.d.Reap(b.ctx, b.db, 100, time.Hour)
	require.NoError(t, err)
	require.Zero(t, res.AuditRows, "rows within the retention stay")
	b.expire(time.Second)
	// Pruning does not depend on auditing being on.
	require.NoError(t, b.d.SetAuditSettings(b.ctx, b.db, &dialect.AuditSettings{Enabled: false, Retention: time.Second}))
	res, err = b.d.Reap(b.ctx, b.db, 100, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 2, res.AuditRows)
	require.Empty(t, b.auditLog(dialect.AuditFilter{}))
}
