package mysql_test

// Schema version 5 on MySQL/MariaDB: a withdrawal is final against a late
// statement of the withdrawn request (one still waiting in the server when
// its client gave up and whose cancel was lost), on every path that inserts
// a hold or a waiter row; an upgrade's withdrawal keeps the hold it obtained
// (defect 1 of the December 2026 review, without an injected fault); Fence
// and ReleaseTx at SERIALIZABLE do not hold off their own lease's renewals
// (defect 4); Reap's retention of withdrawal records; the down migration
// back to version 4.

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/migrations"
)

// actor is a pool of one connection, on which one operation runs.
type actor struct {
	db *sql.DB
}

func (e *env) actor() actor {
	e.t.Helper()
	db := e.pool(nil)
	db.SetMaxOpenConns(1)
	return actor{db: db}
}

// waitingIn waits until a connection to the test's database runs a
// statement whose text contains stmt: information_schema.PROCESSLIST shows a
// procedure's current statement while it waits for a row lock (unlike
// innodb_trx, it is not a cache). The statements named below are each run by
// one procedure only.
func (e *env) waitingIn(stmt string) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		var n int
		err := e.db.QueryRowContext(e.ctx, `SELECT COUNT(*) FROM information_schema.PROCESSLIST
			WHERE DB = DATABASE() AND INSTR(INFO, ?) > 0`, stmt).Scan(&n)
		return err == nil && n > 0
	}, 5*time.Second, 2*time.Millisecond, "no connection ran %q", stmt)
}

// The statements that wait for the name's row (or the own lease's): in
// sqldlm_abandon, the fast path's insert of the name's row, phase 2 of
// sqldlm_acquire_decide, and the first enqueue's share lock on the lease.
const (
	abandonWaits = "INTO v_n FROM sqldlm_locks WHERE name"
	fastWaits    = "INSERT INTO sqldlm_locks (name, token, updated_at) VALUES"
	fullWaits    = "INTO v_exists, v_top FROM sqldlm_locks WHERE name"
	enqueueWaits = "INTO v_live FROM sqldlm_leases"
)

// abandon withdraws p on db as the client's janitor does: again after a
// retryable error (a lock wait timeout: each wait is bounded to a second in
// the procedure; a deadlock).
func (e *env) abandon(db *sql.DB, p dialect.AbandonParams) (*dialect.AbandonResult, error) {
	for {
		res, err := d.Abandon(e.ctx, db, &p)
		if err == nil || !dialect.IsRetryable(err) {
			return res, err
		}
		e.t.Logf("abandon: %v; again", err)
	}
}

type acquired struct {
	res *dialect.AcquireResult
	err error
}

// late sends p on a's connection with a context that is not cancelled (a
// client whose cancel was lost: the statement runs on in the server) and
// returns its outcome on a channel.
func (e *env) late(a actor, p dialect.AcquireParams) <-chan acquired {
	out := make(chan acquired, 1)
	go func() {
		res, err := d.Acquire(e.ctx, a.db, &p)
		out <- acquired{res, err}
	}()
	return out
}

type withdrawn struct {
	res *dialect.AbandonResult
	err error
}

func (e *env) abandonAsync(a actor, p dialect.AbandonParams) <-chan withdrawn {
	out := make(chan withdrawn, 1)
	go func() {
		res, err := e.abandon(a.db, p)
		out <- withdrawn{res, err}
	}()
	return out
}

// killWaiting ends, server-side (KILL QUERY), the statement of the test's
// database whose text contains stmt: a withdrawal whose second step never
// runs, as when the client gives up retrying it.
func (e *env) killWaiting(stmt string) {
	e.t.Helper()
	var id int64
	require.NoError(e.t, e.db.QueryRowContext(e.ctx, `SELECT ID FROM information_schema.PROCESSLIST
		WHERE DB = DATABASE() AND INSTR(INFO, ?) > 0`, stmt).Scan(&id))
	_, err := e.db.ExecContext(e.ctx, `KILL QUERY ?`, id)
	require.NoError(e.t, err)
}

// TestLateStatementAfterWithdrawal: another transaction holds the name's row
// (or the request's own lease row, the only row a first enqueue waits for);
// the request's Acquire, whose client gave up and whose cancel was lost,
// waits behind it, past its first reads; the request is withdrawn meanwhile
// (Abandon commits the withdrawal record at once, then waits for the name's
// row to delete the request's holds); then the blocker commits. Whatever
// the late Acquire returns, no hold or waiter row of the request is left,
// and another lease is granted the name. With "killed", the withdrawal's
// second step never runs (its statement is killed in the server, as when the
// janitor stops retrying): the late grant must see the record itself (schema
// version 4 granted, and its withdrawal had run and found nothing).
func TestLateStatementAfterWithdrawal(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"fast", "full", "fast/killed", "full/killed", "enqueue"} {
		t.Run(path, func(t *testing.T) {
			e := newEnv(t)
			w, o := e.lease(e.db.DB, "w", time.Minute), e.lease(e.db.DB, "o", time.Minute)
			p := dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
			var holder int64
			blocker, err := e.db.BeginTx(e.ctx, nil)
			require.NoError(t, err)
			defer blocker.Rollback()
			waits := enqueueWaits
			switch path {
			case "fast", "fast/killed":
				// An uncommitted first insert of the name's row (as by a
				// grant in a caller's transaction): the fast path's insert
				// waits for it.
				_, err = blocker.ExecContext(e.ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES ('n', 0, UTC_TIMESTAMP(6))`)
				require.NoError(t, err)
				waits = fastWaits
			case "full", "full/killed":
				// The name's row locked: the fast path skips it, and phase 2
				// waits for it.
				e.release(e.db.DB, "n", o, e.grant(e.db.DB, "n", o, dialect.Exclusive))
				require.Equal(t, 1, e.qcount(blocker, `SELECT COUNT(*) FROM sqldlm_locks WHERE name = 'n' FOR UPDATE`))
				waits = fullWaits
			case "enqueue":
				holder = e.grant(e.db.DB, "n", o, dialect.Exclusive)
				require.Equal(t, 1, e.qcount(blocker, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ? FOR UPDATE`, w))
			}
			ab, ac := e.actor(), e.actor()
			withdraw := dialect.AbandonParams{Name: "n", LeaseID: w, RequestID: p.RequestID}
			gotAcquire := e.late(ac, p)
			e.waitingIn(waits)
			var gotAbandon <-chan withdrawn
			switch path {
			case "enqueue":
				// Abandon waits for nothing here.
				res, err := e.abandon(ab.db, withdraw)
				require.NoError(t, err)
				require.Empty(t, res.Freed)
			case "fast/killed", "full/killed":
				gotAbandon = e.abandonAsync(ab, withdraw)
				e.waitingIn(abandonWaits)
				e.killWaiting(abandonWaits)
				require.Error(t, (<-gotAbandon).err, "killed")
				gotAbandon = nil
			default:
				gotAbandon = e.abandonAsync(ab, withdraw)
				e.waitingIn(abandonWaits)
			}
			require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_withdrawn WHERE lease_id = ? AND request_id = ?`, w, p.RequestID),
				"the withdrawal is recorded before its wait")
			require.NoError(t, blocker.Commit())
			a := <-gotAcquire
			if a.err != nil {
				t.Logf("late acquire: %v", a.err)
			} else {
				t.Logf("late acquire: status %d", a.res.Status)
			}
			if gotAbandon != nil {
				require.NoError(t, (<-gotAbandon).err)
			}

			waiters := e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_waiters WHERE lease_id = ? AND request_id = ?`, w, p.RequestID)
			holds := e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE lease_id = ? AND request_id = ?`, w, p.RequestID)
			require.Zero(t, waiters, "a waiter row of the withdrawn request")
			require.Zero(t, holds, "a hold of the withdrawn request")
			res := e.acquire(e.db.DB, p)
			require.Equal(t, dialect.Withdrawn, res.Status, "the request again")
			if holder != 0 {
				e.release(e.db.DB, "n", o, holder)
			}
			e.grant(e.db.DB, "n", o, dialect.Exclusive)
		})
	}
}

// TestUpgradeWithdrawnBehindTxGrant is the review's reproduction of defect 1
// at the dialect level, without an injected fault: A holds "u" shared; B's
// transaction acquires "u" shared with AcquireTx and keeps the name's row;
// A's upgrade waits for that row on a connection whose client gave up (and
// whose cancel was lost); A's client withdraws the upgrade, keeping any hold
// it obtained (the record committed at once, then a wait for the row, which
// is killed in the "killed" cases, as when the janitor stops retrying); B's
// transaction ends (commits: B keeps a shared hold; rolls back: the upgrade
// would be free to go). A still holds "u", shared as before, and the upgrade
// can never be granted; or exclusive, with the token the withdrawal reports
// as kept (an upgrade granted before the withdrawal: ExerciseWithdraw's
// WithdrawnUpgradeKeepsItsHold). Never no hold at all: schema version 4's
// withdrawal deleted the exclusive hold, the handle still saying "shared".
func TestUpgradeWithdrawnBehindTxGrant(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name           string
		commit, killed bool
	}{
		{"B rolls back", false, false},
		{"B commits", true, false},
		{"B rolls back, killed", false, true},
		{"B commits, killed", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a, b := e.lease(e.db.DB, "a", time.Minute), e.lease(e.db.DB, "b", time.Minute)
			ts := e.grant(e.db.DB, "u", a, dialect.Shared)
			btx := e.begin(e.db.DB, sql.LevelReadCommitted)
			got, err := e.acquireTx(btx, dialect.AcquireParams{Name: "u", LeaseID: b, Mode: dialect.Shared})
			require.NoError(t, err)
			require.Equal(t, dialect.Granted, got.Status)

			up := dialect.AcquireParams{Name: "u", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: ts}
			withdraw := dialect.AbandonParams{Name: "u", LeaseID: a, RequestID: up.RequestID, KeepHold: true}
			ua, wa := e.actor(), e.actor()
			gotUp := e.late(ua, up)
			e.waitingIn(fullWaits)
			gotW := e.abandonAsync(wa, withdraw)
			e.waitingIn(abandonWaits)
			if tc.killed {
				e.killWaiting(abandonWaits)
				require.Error(t, (<-gotW).err, "killed")
			}
			if tc.commit {
				require.NoError(t, btx.Commit())
			} else {
				require.NoError(t, btx.Rollback())
			}
			u := <-gotUp
			if u.err != nil {
				t.Logf("late upgrade: %v", u.err)
			} else {
				t.Logf("late upgrade: status %d, token %d", u.res.Status, u.res.Token)
			}
			var kept int64
			if !tc.killed {
				w := <-gotW
				require.NoError(t, w.err)
				kept = w.res.Kept
			}
			t.Logf("withdrawal: kept %d", kept)

			type hold struct {
				token int64
				mode  string
			}
			holdsOfA := func() []hold {
				rows, err := e.db.QueryContext(e.ctx, `SELECT token, mode FROM sqldlm_holders WHERE lease_id = ? AND name = 'u' ORDER BY token`, a)
				require.NoError(t, err)
				defer rows.Close()
				var out []hold
				for rows.Next() {
					var h hold
					require.NoError(t, rows.Scan(&h.token, &h.mode))
					out = append(out, h)
				}
				require.NoError(t, rows.Err())
				return out
			}
			require.NotEmpty(t, holdsOfA(), "A holds nothing: the withdrawal deleted the upgrade's hold")
			if kept != 0 {
				require.Equal(t, []hold{{kept, "X"}}, holdsOfA(), "the kept hold is A's only one")
				return
			}
			require.Equal(t, []hold{{ts, "S"}}, holdsOfA(), "A's shared hold, as before")
			require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_waiters WHERE lease_id = ?`, a))
			if tc.commit {
				e.release(e.db.DB, "u", b, got.Token)
			}
			res := e.acquire(e.db.DB, up)
			require.Equal(t, dialect.Withdrawn, res.Status, "the upgrade can no longer be granted")
			require.Equal(t, []hold{{ts, "S"}}, holdsOfA())
		})
	}
}

// TestSerializableFenceLetsRenewalsThrough (defect 4): a transaction at
// SERIALIZABLE that fenced a hold stays open, and busy (a statement every
// 200 ms, so it is not idle), for 1.5 TTL; the lease's renewals on another
// connection go on succeeding at once, the hold is still there and the
// lease live. Schema version 4's fence read the lease row in the
// transaction, which InnoDB turns into a shared lock at SERIALIZABLE: the
// renewals waited for the transaction, and the lease expired.
func TestSerializableFenceLetsRenewalsThrough(t *testing.T) {
	e := newEnv(t)
	const ttl = 2 * time.Second
	a := e.lease(e.db.DB, "a", ttl)
	tok := e.grant(e.db.DB, "n", a, dialect.Exclusive)
	fenced := e.pool(nil)
	tx := e.begin(fenced, sql.LevelSerializable)
	ok, err := d.Fence(e.ctx, e.db.DB, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}, ttl)
	require.NoError(t, err)
	require.True(t, ok)

	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); <-tick.C {
		var one int
		require.NoError(t, tx.QueryRowContext(e.ctx, `SELECT 1`).Scan(&one))
		ctx, cancel := context.WithTimeout(e.ctx, ttl/4)
		ok, err := d.RenewLease(ctx, e.db.DB, a)
		cancel()
		require.NoError(t, err, "a renewal waited for the fenced transaction")
		require.True(t, ok, "the lease expired")
	}
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, tok))
	ok, err = d.Fence(e.ctx, e.db.DB, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: tok}, ttl)
	require.NoError(t, err)
	require.True(t, ok, "still held")
	require.NoError(t, tx.Commit())
}

// TestReapDeletesOldWithdrawals: Reap deletes withdrawal records older than
// dialect.WithdrawnRetention, at most limit of them per call, and keeps
// younger ones (their lease is live).
func TestReapDeletesOldWithdrawals(t *testing.T) {
	e := newEnv(t)
	require.Equal(t, time.Hour, dialect.WithdrawnRetention, "the procedure's INTERVAL 1 HOUR")
	w := e.lease(e.db.DB, "w", time.Minute)
	for i := range 5 {
		_, err := e.abandon(e.db.DB, dialect.AbandonParams{Name: "n", LeaseID: w, RequestID: int64(i + 1)})
		require.NoError(t, err)
	}
	_, err := e.db.ExecContext(e.ctx, `UPDATE sqldlm_withdrawn SET withdrawn_at = withdrawn_at - INTERVAL 61 MINUTE WHERE request_id <= 3`)
	require.NoError(t, err)
	records := func() int { return e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_withdrawn`) }
	_, err = d.Reap(e.ctx, e.db.DB, 2, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 3, records(), "two of the three old ones (the limit)")
	_, err = d.Reap(e.ctx, e.db.DB, 2, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 2, records(), "the young ones stay")
	require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_withdrawn WHERE request_id <= 3`))
}

// TestMigrateDownRestoresVersion4: after up to 5 and down to 4, the routines,
// tables and views are exactly those of a schema migrated to 4 only, and
// they work (version 4's sqldlm_abandon takes the lease and the request).
func TestMigrateDownRestoresVersion4(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want, got := migratedDown(t, ctx, 4)
	require.Contains(t, want, "sqldlm_pending")
	require.NotContains(t, want, "sqldlm_withdrawn")
	require.Equal(t, want, schemaOf(t, ctx, got))

	lease := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, got, &dialect.CreateLeaseParams{ID: lease, Owner: "o", TTL: time.Minute}))
	res, err := d.Acquire(ctx, got, &dialect.AcquireParams{Name: "n", LeaseID: lease, RequestID: 1, Mode: X})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	_, err = got.ExecContext(ctx, `CALL sqldlm_abandon(?, 1)`, lease)
	require.NoError(t, err)
	var n int
	require.NoError(t, got.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_holders`).Scan(&n))
	require.Zero(t, n, "abandoned")
	_, err = migrations.Up(ctx, got, d)
	require.NoError(t, err, "and up again")
}

// TestSerializableReleaseTxLetsRenewalsThrough: ReleaseTx in a transaction
// at SERIALIZABLE, with audit off and on, leaves the lease's renewals free
// while the transaction stays open, writes the audit row with the lease's
// owner, and the hold is gone once it commits. Schema version 4 read the
// lease's owner in the transaction when audit was on: a shared lock on the
// lease row until the transaction ended, which the renewals waited for.
func TestSerializableReleaseTxLetsRenewalsThrough(t *testing.T) {
	e := newEnv(t)
	for _, audit := range []bool{false, true} {
		e.setAudit(audit, time.Hour)
		name := "r-" + map[bool]string{false: "off", true: "on"}[audit]
		a := e.lease(e.db.DB, "alice", time.Minute)
		tok := e.grant(e.db.DB, name, a, dialect.Exclusive)
		tx := e.begin(e.db.DB, sql.LevelSerializable)
		ok, err := d.ReleaseTx(e.ctx, e.db.DB, tx, &dialect.HoldRef{Name: name, LeaseID: a, Token: tok})
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = d.ReleaseTx(e.ctx, e.db.DB, tx, &dialect.HoldRef{Name: name, LeaseID: a, Token: tok})
		require.NoError(t, err)
		require.False(t, ok, "audit %v: released already", audit)
		ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
		ok, err = d.RenewLease(ctx, e.db.DB, a)
		cancel()
		require.NoError(t, err, "audit %v: the renewal waited for the transaction", audit)
		require.True(t, ok)
		require.NoError(t, tx.Commit())
		require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_holders WHERE token = ?`, tok))
		log := e.auditLog(dialect.AuditFilter{Name: name})
		if !audit {
			require.Empty(t, log)
			continue
		}
		require.Len(t, log, 2)
		require.Equal(t, dialect.AuditRelease, log[1].Event)
		require.Equal(t, "alice", log[1].Owner)
		require.Equal(t, tok, log[1].Token)
	}
}

// TestWaiterWithdrawnBehindTxGrant: while a transaction that acquired the
// name with AcquireTx holds the name's row, a waiter is still withdrawn at
// once: its waiter row is deleted and the withdrawal recorded, even if
// Abandon then reports a lock wait timeout (for the holds it deletes under
// the name's row); a late Acquire of the request is answered Withdrawn.
func TestWaiterWithdrawnBehindTxGrant(t *testing.T) {
	e := newEnv(t)
	h, g, w := e.lease(e.db.DB, "h", time.Minute), e.lease(e.db.DB, "g", time.Minute), e.lease(e.db.DB, "w", time.Minute)
	e.grant(e.db.DB, "n", h, dialect.Shared)
	tx := e.begin(e.db.DB, sql.LevelReadCommitted)
	got, err := e.acquireTx(tx, dialect.AcquireParams{Name: "n", LeaseID: g, Mode: dialect.Shared})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, got.Status, "the name's row locked until tx ends")

	p := dialect.AcquireParams{Name: "n", LeaseID: w, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
	require.Equal(t, dialect.Blocked, e.acquire(e.db.DB, p).Status)
	require.Equal(t, 1, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_waiters WHERE lease_id = ?`, w))
	_, err = d.Abandon(e.ctx, e.db.DB, &dialect.AbandonParams{Name: "n", LeaseID: w, RequestID: p.RequestID})
	t.Logf("abandon while the name's row is held: %v", err)
	if err != nil {
		require.ErrorIs(t, err, dialect.ErrLockTimeout)
	}
	require.Zero(t, e.count(e.db.DB, `SELECT COUNT(*) FROM sqldlm_waiters WHERE lease_id = ?`, w), "the waiter row is gone")
	require.Equal(t, dialect.Withdrawn, e.acquire(e.db.DB, p).Status)
	require.NoError(t, tx.Rollback())
	res, err := e.abandon(e.db.DB, dialect.AbandonParams{Name: "n", LeaseID: w, RequestID: p.RequestID})
	require.NoError(t, err)
	require.Empty(t, res.Freed)
}
