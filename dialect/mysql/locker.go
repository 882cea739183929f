package mysql

// MySQL's lock operations are stored procedures, so that each method is one
// CALL: one statement from Go, one commit on the server. The live definition
// of each procedure, table and view is in schema/<name>.sql, generated from
// the migrations (migrations/*.sql, the source; each migration's header says
// what its version changed, and migrations/HISTORY.md lists the versions). Names and owners are always bind parameters.
// Every procedure reads the clock with SYSDATE(6) under time_zone '+00:00',
// restores the session's time_zone before it returns, runs its transactions
// at READ COMMITTED and rolls back (then re-raises) on any error, so a lock
// wait timeout (1205), which rolls back only the statement, never leaves half
// a transaction to be committed. The procedures that run in the caller's
// transaction (Fence, AcquireTx, ReleaseTx) have no transaction control and
// only restore the time zone and re-raise. Times cross the wire as
// microseconds. While the audit setting is on, the procedures that grant,
// upgrade, downgrade or delete holds write the audit rows (marked [audit])
// in the same transaction, the setting read once per call on the way to a
// change. Statements per operation, all inside the procedure:
//
//	CreateLease  CALL sqldlm_create_lease: INSERT lease
//	RenewLease   CALL sqldlm_renew_lease: UPDATE lease WHERE live (by
//	             SYSDATE(6), evaluated after the row lock)
//	DeleteLease  CALL sqldlm_delete_lease: SELECT lease FOR UPDATE; SELECT
//	             its holds' names FOR UPDATE (the result); [audit: release
//	             'lease closed' per hold]; DELETE holds, withdrawal records,
//	             waiters, pending rows, lease
//	Acquire      CALL sqldlm_acquire: START TRANSACTION, then (not an
//	             upgrade) the fast path: one consistent read, no row lock:
//	             own lease live?, waiter row of this request?, any hold of
//	             the name or waiter ahead?, the name's row there?, request
//	             withdrawn (Withdrawn, status 6)? A name in
//	             use: the conflicting hold that blocks longest, then the live
//	             waiters ahead and this request's hold (a repeated request
//	             returns it; consistent reads);
//	             Blocked: ROLLBACK, [first enqueue: SELECT own lease LOCK IN
//	             SHARE MODE, INSERT waiter, SELECT withdrawal record LOCK IN
//	             SHARE MODE (withdrawn: ROLLBACK)]. A
//	             name unused: SELECT lock row FOR UPDATE SKIP LOCKED (or
//	             INSERT it ... ON DUPLICATE KEY UPDATE, under a 1 s lock
//	             wait bound); SELECT own lease LOCK IN SHARE MODE, live by
//	             SYSDATE(6), with the name's holds and waiters again, the
//	             audit setting and the withdrawal record; INSERT hold; [audit: grant]; UPDATE
//	             lock row; COMMIT. Anything else (a lease not live, an
//	             upgrade, a takeover, compatible holds, an own waiter row,
//	             the lock row locked) rolls back and runs the full path,
//	             under the 1 s lock wait bound: START TRANSACTION,
//	             sqldlm_acquire_decide (retried twice after a deadlock).
//	             Phase 1, consistent reads, no row
//	             locks: request withdrawn?; own lease live?; hold of this
//	             request (idempotent retry)?; [upgrade: own shared hold?, other live upgrade
//	             waiter?]; the conflicting hold that blocks longest (of a
//	             live lease, or of one dead for less than the lock delay);
//	             live waiters ahead.
//	             Phase 2, only if nothing blocked: SELECT lock row FOR
//	             UPDATE; SELECT own lease LOCK IN SHARE MODE and re-check it
//	             by SYSDATE(6); [INSERT lock row ... ON DUPLICATE KEY
//	             UPDATE]; request withdrawn (read now that the name's row is
//	             locked)?; hold of this request again; [upgrade: own shared
//	             hold FOR UPDATE SKIP LOCKED, reading its payload];
//	             conflicting holds and waiters again; per dead lease with a
//	             conflicting hold, in id order: SELECT lease FOR UPDATE SKIP
//	             LOCKED, re-check it (a locking read) by SYSDATE(6) (dead for
//	             the lock delay), SELECT each of its holds of the name FOR
//	             UPDATE SKIP LOCKED (by primary key). Once all are locked:
//	             INSERT hold (AUTO_INCREMENT token); per dead lease, per hold
//	             of the name (by primary key): a result set (TookOver) if it
//	             conflicts, [audit: takeover], DELETE; UPDATE lease SET
//	             broken_at; [audit: grant or upgrade]; [DELETE upgraded
//	             hold]; UPDATE lock row; DELETE own waiter; COMMIT. Then the
//	             status row, with the number of holds taken over. Blocked:
//	             ROLLBACK, [INSERT waiter ... ON DUPLICATE KEY; an upgrade's
//	             first enqueue writes the lock row (ON DUPLICATE KEY UPDATE
//	             updated_at) and re-reads the live upgrade waiters first:
//	             another one, status 5, nothing queued]. A lease or
//	             hold locked by another transaction (a fence) is not waited
//	             for: Blocked.
//	AcquireTx    CALL sqldlm_acquire_tx, in the caller's transaction:
//	             sqldlm_acquire_decide as above, but the own lease is read
//	             without a lock (its renewals go on), and right after the lock
//	             row's FOR UPDATE its token is compared with a consistent
//	             read of it (a REPEATABLE READ snapshot older than the name's
//	             last grant raises 'sqldlm isolation: ...' before any
//	             change); when granted, DELETE the pending row
//	CreatePending  CALL sqldlm_create_pending: INSERT pending row
//	PendingOutcome CALL sqldlm_pending_outcome: SELECT pending row (no
//	             lock); SELECT it FOR UPDATE SKIP LOCKED; DELETE it
//	Abandon      CALL sqldlm_abandon, under a 1 s lock wait bound: INSERT
//	             withdrawal record ... ON DUPLICATE KEY UPDATE; DELETE its
//	             waiter; COMMIT; SELECT the name's lock row FOR UPDATE (or
//	             INSERT it ... ON DUPLICATE KEY UPDATE); KeepHold: SELECT the
//	             request's hold FOR UPDATE (its token); otherwise SELECT the
//	             request's holds FOR UPDATE (the result), [audit: release
//	             'abandoned'], DELETE them; COMMIT
//	Release      CALL sqldlm_release: DELETE hold unless audit is on (one
//	             statement); [audit: SELECT hold FOR UPDATE, release; DELETE
//	             hold]
//	ReleaseTx    CALL sqldlm_release_tx, in the caller's transaction: DELETE
//	             hold (audit off); [audit: SELECT hold FOR UPDATE, answer 2;
//	             CALL sqldlm_lease_live through db for the owner; CALL
//	             sqldlm_release_tx again with it: release, DELETE hold]. No
//	             read of the lease row in the transaction
//	Downgrade    CALL sqldlm_downgrade: SELECT hold FOR UPDATE; SELECT lease
//	             live (no lock); UPDATE hold SET mode = 'S'; [audit:
//	             downgrade]
//	SetPayload   CALL sqldlm_set_payload: SELECT hold FOR UPDATE; SELECT
//	             lease live (no lock); UPDATE hold SET payload
//	Fence        CALL sqldlm_fence, in the caller's transaction: SELECT hold
//	             LOCK IN SHARE MODE (through Galera: UPDATE hold SET
//	             fences = fences + 1, a write certification sees); bound
//	             idle time (MariaDB
//	             idle_transaction_timeout, MySQL wait_timeout). Then CALL
//	             sqldlm_lease_live through db, outside the transaction:
//	             SELECT lease live by SYSDATE(6) (no lock, so renewals go on,
//	             at every isolation level of the caller's transaction)
//	Reap         CALL sqldlm_reap: SELECT dead leases ORDER BY expires_at
//	             LIMIT n FOR UPDATE SKIP LOCKED; per lease: lock its holds
//	             and its pending rows (SKIP LOCKED; a pinned lease, or one
//	             with a grant in an open transaction, waits for a later
//	             pass), SELECT their names (a result set), per hold (by
//	             primary key) [audit: expire] and DELETE; DELETE withdrawal
//	             records, waiters, pending rows, lease; COMMIT; then, each
//	             picked FOR UPDATE SKIP LOCKED LIMIT n and deleted by key:
//	             idle lock rows, pending rows of missing leases, withdrawal
//	             records older than an hour, audit rows older than the
//	             retention; COMMIT
//
// MySQL has no notifications: waiters poll (no dialect.Notifier).
//
// With go-sql-driver's default DSN a CALL with arguments is a server-side
// prepared statement, which costs one more round trip (the prepare);
// interpolateParams=true in the DSN makes it one round trip.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

// Statuses returned by sqldlm_acquire.
const (
	statusGranted         = 1
	statusBlocked         = 2
	statusLeaseLost       = 3
	statusNotHeld         = 4
	statusUpgradeConflict = 5
	statusWithdrawn       = 6
)

// maxIdleSeconds is the largest idle_transaction_timeout and wait_timeout
// the servers accept (one year).
const maxIdleSeconds = 365 * 24 * 3600

// maxIdleAfter bounds Reap's idleAfter, so that the server's date arithmetic
// (now - idleAfter) stays within DATETIME's range.
const maxIdleAfter = 100 * 365 * 24 * time.Hour

func (d mysqlDialect) CreateLease(ctx context.Context, db *sql.DB, p *dialect.CreateLeaseParams) error {
	stmt, err := d.prepared(ctx, db, `CALL sqldlm_create_lease(?, ?, ?)`)
	if err != nil {
		return err
	}
	_, err = stmt.ExecContext(ctx, p.ID, p.Owner, p.TTL.Microseconds())
	return d.ClassifyError(err)
}

func (d mysqlDialect) RenewLease(ctx context.Context, db *sql.DB, leaseID int64) (bool, error) {
	return d.callBool(ctx, db, `CALL sqldlm_renew_lease(?)`, leaseID)
}

func (d mysqlDialect) DeleteLease(ctx context.Context, db *sql.DB, leaseID int64) ([]string, error) {
	var names []string
	err := d.call(ctx, db, func(rows *sql.Rows, _ []string) error {
		var name string
		if err := rows.Scan(&name); err != nil {
			return err
		}
		names = append(names, name)
		return nil
	}, `CALL sqldlm_delete_lease(?)`, leaseID)
	if err != nil {
		return nil, err
	}
	return sqlutil.Unique(names), nil
}

// Acquire calls sqldlm_acquire. Its last result set is the status row (seven
// columns, the first named status); before it, a takeover returns one result
// set per conflicting hold of a dead lease, as it was before the grant (seven
// columns, the first named owner). Those are sent before the procedure's
// COMMIT: they count only when the status row, sent after the COMMIT,
// reports a grant that took over as many holds (a takeover that ended
// Blocked was rolled back). call reads every result set, so an error the
// COMMIT raises is returned.
func (d mysqlDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	r := acquireReader{proc: "sqldlm_acquire"}
	err := d.call(ctx, db, r.scan, `CALL sqldlm_acquire(?, ?, ?, ?, ?, ?, ?, ?)`, p.Name, p.LeaseID, p.RequestID,
		string(p.Mode), p.Enqueue, p.UpgradeToken, p.Payload, p.LockDelay.Microseconds())
	if err != nil {
		return nil, err
	}
	return r.result()
}

// AcquireTx calls sqldlm_acquire_tx in tx: the same decision and result sets
// as sqldlm_acquire, with no transaction control of its own, and, when it
// grants, the deletion of the request's pending row. It never locks the own
// lease row, so the lease's renewals go on while tx is open. It works at
// READ COMMITTED and at REPEATABLE READ, but raises an error matching
// dialect.ErrIsolation, having changed nothing, when tx's snapshot is older
// than the name's last grant (or than the request's pending row, while the
// lease looks dead in it): run tx at READ COMMITTED.
func (d mysqlDialect) AcquireTx(ctx context.Context, tx *sql.Tx, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	if p.Enqueue || p.UpgradeToken != 0 {
		return nil, fmt.Errorf("AcquireTx neither queues nor upgrades (Enqueue %v, UpgradeToken %d)", p.Enqueue, p.UpgradeToken)
	}
	r := acquireReader{proc: "sqldlm_acquire_tx"}
	rows, err := tx.QueryContext(ctx, `CALL sqldlm_acquire_tx(?, ?, ?, ?, ?, ?)`, p.Name, p.LeaseID, p.RequestID,
		string(p.Mode), p.Payload, p.LockDelay.Microseconds())
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	if err := d.readAll(rows, r.scan); err != nil {
		return nil, err
	}
	return r.result()
}

// acquireReader collects the result sets of sqldlm_acquire and
// sqldlm_acquire_tx.
type acquireReader struct {
	proc      string
	status    int
	token     sql.NullInt64
	owner     sql.NullString
	mode      sql.NullString
	expiresUS sql.NullInt64
	ahead     int
	tookOver  int
	got       bool
	taken     []dialect.TakenHold
}

func (r *acquireReader) scan(rows *sql.Rows, columns []string) error {
	if len(columns) != 7 {
		return fmt.Errorf("%s returned a result set of %d columns", r.proc, len(columns))
	}
	switch columns[0] {
	case "status":
		if r.got {
			return fmt.Errorf("%s returned two status rows", r.proc)
		}
		r.got = true
		return rows.Scan(&r.status, &r.token, &r.owner, &r.mode, &r.expiresUS, &r.ahead, &r.tookOver)
	case "owner":
		if r.got {
			return fmt.Errorf("%s returned a taken-over hold after its status", r.proc)
		}
		var (
			h         dialect.TakenHold
			hmode     string
			expiredUS int64
		)
		if err := rows.Scan(&h.Owner, &h.LeaseID, &h.Token, &hmode, &expiredUS, &h.Broken, &h.Payload); err != nil {
			return err
		}
		if len(hmode) != 1 {
			return fmt.Errorf("%s returned a taken-over hold of mode %q", r.proc, hmode)
		}
		h.Mode = dialect.Mode(hmode[0])
		h.ExpiredAt = time.UnixMicro(expiredUS).UTC()
		r.taken = append(r.taken, h)
		return nil
	default:
		return fmt.Errorf("%s returned a result set starting with column %q", r.proc, columns[0])
	}
}

func (r *acquireReader) result() (*dialect.AcquireResult, error) {
	if !r.got {
		return nil, fmt.Errorf("%s returned no status", r.proc)
	}
	switch r.status {
	case statusGranted:
		if !r.token.Valid {
			return nil, fmt.Errorf("%s granted without a token", r.proc)
		}
		res := &dialect.AcquireResult{Status: dialect.Granted, Token: r.token.Int64}
		if r.tookOver > 0 {
			if r.tookOver != len(r.taken) {
				return nil, fmt.Errorf("%s took over %d holds but returned %d", r.proc, r.tookOver, len(r.taken))
			}
			res.TookOver = r.taken
		}
		return res, nil
	case statusBlocked:
		b := &dialect.Blocker{Owner: r.owner.String, WaitersAhead: r.ahead}
		if r.mode.Valid && r.mode.String != "" {
			b.Mode = dialect.Mode(r.mode.String[0])
			b.ExpiresIn = time.Duration(r.expiresUS.Int64) * time.Microsecond
		}
		return &dialect.AcquireResult{Status: dialect.Blocked, Blocker: b}, nil
	case statusLeaseLost:
		return &dialect.AcquireResult{Status: dialect.LeaseLost}, nil
	case statusNotHeld:
		return &dialect.AcquireResult{Status: dialect.NotHeld}, nil
	case statusUpgradeConflict:
		return &dialect.AcquireResult{Status: dialect.UpgradeConflict}, nil
	case statusWithdrawn:
		return &dialect.AcquireResult{Status: dialect.Withdrawn}, nil
	default:
		return nil, fmt.Errorf("%s returned unknown status %d", r.proc, r.status)
	}
}

// CreatePending calls sqldlm_create_pending, which inserts the record with
// the server's clock in a transaction of its own.
func (d mysqlDialect) CreatePending(ctx context.Context, db *sql.DB, leaseID, requestID int64) error {
	stmt, err := d.prepared(ctx, db, `CALL sqldlm_create_pending(?, ?)`)
	if err != nil {
		return err
	}
	_, err = stmt.ExecContext(ctx, leaseID, requestID)
	return d.ClassifyError(err)
}

// Outcomes returned by sqldlm_pending_outcome.
const (
	outcomeOpen         = 1
	outcomeCommitted    = 2
	outcomeNotCommitted = 3
)

// PendingOutcome calls sqldlm_pending_outcome, which, in a short READ
// COMMITTED transaction of its own, reads the record without a lock (gone:
// committed), then tries to lock it with FOR UPDATE SKIP LOCKED (locked: the
// granting transaction is open) and deletes it if it can (not committed).
func (d mysqlDialect) PendingOutcome(ctx context.Context, db *sql.DB, leaseID, requestID int64) (dialect.TxOutcome, error) {
	stmt, err := d.prepared(ctx, db, `CALL sqldlm_pending_outcome(?, ?)`)
	if err != nil {
		return 0, err
	}
	var out int
	if err := stmt.QueryRowContext(ctx, leaseID, requestID).Scan(&out); err != nil {
		return 0, d.ClassifyError(err)
	}
	switch out {
	case outcomeOpen:
		return dialect.TxOpen, nil
	case outcomeCommitted:
		return dialect.TxCommitted, nil
	case outcomeNotCommitted:
		return dialect.TxNotCommitted, nil
	default:
		return 0, fmt.Errorf("sqldlm_pending_outcome returned unknown outcome %d", out)
	}
}

// Abandon calls sqldlm_abandon, which first records the withdrawal in
// sqldlm_withdrawn and deletes the request's waiter row, and commits; then,
// with the name's row locked exclusively (created if missing), deletes the
// request's hold (unless p.KeepHold: then it reports the hold's token), and
// commits. Each lock wait is bounded to a second: an error matching
// dialect.ErrLockTimeout (the name's row held by a transaction that acquired
// the name with AcquireTx) may come after the first commit, when the
// withdrawal is recorded and only the hold is left to delete or report:
// retry until it succeeds. Its result sets: the names of the deleted holds
// (none with KeepHold), then one row, kept.
func (d mysqlDialect) Abandon(ctx context.Context, db *sql.DB, p *dialect.AbandonParams) (*dialect.AbandonResult, error) {
	res := &dialect.AbandonResult{}
	var got bool
	err := d.call(ctx, db, func(rows *sql.Rows, columns []string) error {
		switch columns[0] {
		case "name":
			var name string
			if err := rows.Scan(&name); err != nil {
				return err
			}
			res.Freed = append(res.Freed, name)
			return nil
		case "kept":
			var kept sql.NullInt64
			if err := rows.Scan(&kept); err != nil {
				return err
			}
			res.Kept, got = kept.Int64, true
			return nil
		default:
			return fmt.Errorf("sqldlm_abandon returned a result set starting with column %q", columns[0])
		}
	}, `CALL sqldlm_abandon(?, ?, ?, ?)`, p.Name, p.LeaseID, p.RequestID, p.KeepHold)
	if err != nil {
		return nil, err
	}
	if !got {
		return nil, errors.New("sqldlm_abandon returned no kept row")
	}
	res.Freed = sqlutil.Unique(res.Freed)
	return res, nil
}

func (d mysqlDialect) Release(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	return d.callBool(ctx, db, `CALL sqldlm_release(?, ?, ?)`, p.Name, p.LeaseID, p.Token)
}

// ReleaseTx calls sqldlm_release_tx in the caller's transaction: the
// release procedure starts a transaction of its own, which would commit the
// caller's. It writes the audit row in tx too. It reads the hold with a
// locking read (or deletes it), so "not held" is the latest committed state
// at every isolation level, and it reads no lease row in tx: with audit on,
// the procedure answers 2 (the hold locked, nothing else changed) and the
// audit row's owner is read through db, outside tx (sqldlm_lease_live), for
// a second call that writes the row and deletes the hold. At SERIALIZABLE a
// read of the lease row in tx would be a shared lock held until tx ends,
// holding off the lease's renewals. One round trip with audit off, three
// with it on.
func (d mysqlDialect) ReleaseTx(ctx context.Context, db *sql.DB, tx *sql.Tx, p *dialect.HoldRef) (bool, error) {
	const releaseTx = `CALL sqldlm_release_tx(?, ?, ?, ?)`
	var n int64
	if err := tx.QueryRowContext(ctx, releaseTx, p.Name, p.LeaseID, p.Token, nil).Scan(&n); err != nil {
		return false, d.ClassifyError(err)
	}
	if n == 2 {
		_, owner, err := d.leaseState(ctx, db, p.LeaseID)
		if err != nil {
			return false, err
		}
		if err := tx.QueryRowContext(ctx, releaseTx, p.Name, p.LeaseID, p.Token, owner).Scan(&n); err != nil {
			return false, d.ClassifyError(err)
		}
		if n == 2 {
			return false, errors.New("sqldlm_release_tx asked for the owner again")
		}
	}
	return n != 0, nil
}

// leaseState calls sqldlm_lease_live: whether the lease is live by the
// latest committed state and the server's clock, and its owner ("" if there
// is no such lease), in a READ COMMITTED transaction of its own on db.
func (d mysqlDialect) leaseState(ctx context.Context, db *sql.DB, leaseID int64) (live bool, owner string, err error) {
	stmt, err := d.prepared(ctx, db, `CALL sqldlm_lease_live(?)`)
	if err != nil {
		return false, "", err
	}
	var n int64
	if err := stmt.QueryRowContext(ctx, leaseID).Scan(&n, &owner); err != nil {
		return false, "", d.ClassifyError(err)
	}
	return n != 0, owner, nil
}

func (d mysqlDialect) Downgrade(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	return d.callBool(ctx, db, `CALL sqldlm_downgrade(?, ?, ?)`, p.Name, p.LeaseID, p.Token)
}

// SetPayload calls sqldlm_set_payload. A payload over
// dialect.PayloadMaxBytes is an error (the procedure runs in strict mode).
func (d mysqlDialect) SetPayload(ctx context.Context, db *sql.DB, p *dialect.HoldRef, payload string) (bool, error) {
	return d.callBool(ctx, db, `CALL sqldlm_set_payload(?, ?, ?, ?)`, p.Name, p.LeaseID, p.Token, payload)
}

// Fence pins the hold inside tx with sqldlm_fence (a shared lock on the hold,
// read in its latest version; nothing else is read or locked in tx; on a
// Galera node a write to the hold instead, because Galera certifies writes
// only: a shared lock would not stop a takeover certified on another node,
// HA-2026-12 G3), then
// checks the lease with sqldlm_lease_live through db, outside tx, in a READ
// COMMITTED transaction of its own: the latest committed state by SYSDATE(6),
// whatever tx's isolation level or snapshot. The pin comes first, so a lease
// found live then was live while the hold was pinned, and the pinned hold
// cannot be taken over or released until tx ends. Two round trips, and db
// lends a second connection for the second (a pool limited to one
// connection, held by tx, would wait for ctx). No read of the lease row in tx:
// at SERIALIZABLE InnoDB turns plain reads into shared locks held until tx
// ends, which would hold off the lease's renewals; and a REPEATABLE READ
// snapshot older than the lease's last renewal needs no retry.
//
// Once pinned, it bounds how long tx may sit idle to idleTimeout, rounded up
// to whole seconds: on MariaDB with idle_transaction_timeout, on MySQL 8
// (which has no idle-in-transaction timeout) with wait_timeout, which ends
// the connection, and so rolls back its transaction, once it has been idle
// that long, in or out of a transaction. The setting is left on tx's pooled
// connection after tx ends (nothing runs on it at the caller's commit or
// rollback to put it back): on MariaDB a later transaction of the
// application on that connection that sits idle for longer than
// idleTimeout is rolled back by the server, and its next statement fails;
// on MySQL the connection is closed once it sits idle (in or out of a
// transaction) for longer, and the pool opens another.
func (d mysqlDialect) Fence(ctx context.Context, db *sql.DB, tx *sql.Tx, p *dialect.HoldRef, idleTimeout time.Duration) (bool, error) {
	idle := int64(0)
	if idleTimeout > 0 {
		idle = int64(idleTimeout / time.Second)
		if idleTimeout%time.Second != 0 {
			idle++
		}
		idle = min(idle, maxIdleSeconds)
	}
	var pinned int
	if err := tx.QueryRowContext(ctx, `CALL sqldlm_fence(?, ?, ?, ?)`, p.Name, p.LeaseID, p.Token, idle).Scan(&pinned); err != nil {
		return false, d.ClassifyError(err)
	}
	if pinned == 0 {
		return false, nil
	}
	live, _, err := d.leaseState(ctx, db, p.LeaseID)
	return live, err
}

func (d mysqlDialect) Reap(ctx context.Context, db *sql.DB, limit int, idleAfter time.Duration) (*dialect.ReapResult, error) {
	if limit <= 0 || limit > math.MaxInt32 {
		limit = math.MaxInt32
	}
	idleAfter = min(idleAfter, maxIdleAfter)
	res := &dialect.ReapResult{}
	var counted bool
	err := d.call(ctx, db, func(rows *sql.Rows, columns []string) error {
		if len(columns) == 5 {
			counted = true
			return rows.Scan(&res.Leases, &res.Holds, &res.Waiters, &res.IdleLocks, &res.AuditRows)
		}
		var name string
		if err := rows.Scan(&name); err != nil {
			return err
		}
		res.Freed = append(res.Freed, name)
		return nil
	}, `CALL sqldlm_reap(?, ?)`, limit, idleAfter.Microseconds())
	if err != nil {
		return nil, err
	}
	if !counted {
		return nil, errors.New("sqldlm_reap returned no counts")
	}
	res.Freed = sqlutil.Unique(res.Freed)
	return res, nil
}

// callBool calls a procedure that returns one row of one number and reports
// whether it is not zero.
func (d mysqlDialect) callBool(ctx context.Context, db *sql.DB, query string, args ...any) (bool, error) {
	stmt, err := d.prepared(ctx, db, query)
	if err != nil {
		return false, err
	}
	var n int64
	if err := stmt.QueryRowContext(ctx, args...).Scan(&n); err != nil {
		return false, d.ClassifyError(err)
	}
	return n != 0, nil
}

// call runs a CALL and passes each row of each of its result sets to scan,
// with the result set's column names. It reads every result set to the
// end, so an error the procedure raises after a result set (a failed COMMIT)
// is returned, not lost.
func (d mysqlDialect) call(ctx context.Context, db *sql.DB, scan func(rows *sql.Rows, columns []string) error, query string, args ...any) error {
	stmt, err := d.prepared(ctx, db, query)
	if err != nil {
		return err
	}
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return d.ClassifyError(err)
	}
	return d.readAll(rows, scan)
}

// readAll passes each row of each result set of rows to scan, with the
// result set's column names, reading to the end and closing rows.
func (d mysqlDialect) readAll(rows *sql.Rows, scan func(rows *sql.Rows, columns []string) error) error {
	defer rows.Close()
	for {
		cols, err := rows.Columns()
		if err != nil {
			return d.ClassifyError(err)
		}
		for rows.Next() {
			if err := scan(rows, cols); err != nil {
				return d.ClassifyError(err)
			}
		}
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		return d.ClassifyError(err)
	}
	return d.ClassifyError(rows.Close())
}
