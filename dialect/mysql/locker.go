package mysql

// MySQL's lock operations are stored procedures (created by the migration in
// migrations/mysql), so that each method is one CALL: one statement from Go,
// one commit on the server. Names and owners are always bind parameters.
// Every procedure reads the clock with SYSDATE(6) under time_zone '+00:00',
// restores the session's time_zone before it returns, runs its transactions
// at READ COMMITTED and rolls back (then re-raises) on any error, so a lock
// wait timeout (1205), which rolls back only the statement, never leaves half
// a transaction to be committed. Times cross the wire as microseconds.
// Statements per operation, all inside the procedure:
//
//	CreateLease  CALL sqldlm_create_lease: INSERT lease
//	RenewLease   CALL sqldlm_renew_lease: UPDATE lease WHERE live (by
//	             SYSDATE(6), evaluated after the row lock)
//	DeleteLease  CALL sqldlm_delete_lease: SELECT lease FOR UPDATE; SELECT
//	             its holds' names FOR UPDATE (the result); DELETE holds,
//	             waiters, lease
//	Acquire      CALL sqldlm_acquire. Phase 1, consistent reads, no row
//	             locks: own lease live?; hold of this request (idempotent
//	             retry)?; [upgrade: own shared hold?, other live upgrade
//	             waiter?]; the conflicting hold that blocks longest (of a
//	             live lease, or of one dead for less than the lock delay);
//	             live waiters ahead. Blocked: [INSERT waiter ... ON DUPLICATE
//	             KEY].
//	             Phase 2, only if nothing blocked: SELECT lock row FOR UPDATE
//	             [INSERT it ... ON DUPLICATE KEY UPDATE]; SELECT own lease LOCK
//	             IN SHARE MODE and re-check it by SYSDATE(6); hold of this
//	             request again; [upgrade: own shared hold FOR UPDATE SKIP
//	             LOCKED, reading its payload]; conflicting holds and waiters
//	             again; per dead lease with a conflicting hold, in id order:
//	             SELECT lease FOR UPDATE SKIP LOCKED, re-check by SYSDATE(6)
//	             (dead for the lock delay), SELECT each of its holds
//	             of the name FOR UPDATE SKIP LOCKED (by primary key), SELECT
//	             its conflicting holds with the lease's expires_at and
//	             broken_at and their payloads (a result set: TookOver),
//	             UPDATE lease SET
//	             broken_at, DELETE its holds of the name; then INSERT hold
//	             (AUTO_INCREMENT token), [DELETE upgraded hold], UPDATE lock
//	             row, DELETE own waiter, COMMIT; the status row, with the
//	             number of holds taken over, last. A lease or hold locked by
//	             another transaction (a fence) is not waited for: Blocked.
//	Abandon      CALL sqldlm_abandon: SELECT the request's holds FOR UPDATE
//	             (the result); DELETE them; DELETE its waiter
//	Release      CALL sqldlm_release: DELETE hold
//	Downgrade    CALL sqldlm_downgrade: SELECT hold FOR UPDATE; SELECT lease
//	             live (no lock); UPDATE hold SET mode = 'S'
//	SetPayload   CALL sqldlm_set_payload: SELECT hold FOR UPDATE; SELECT
//	             lease live (no lock); UPDATE hold SET payload
//	Fence        CALL sqldlm_fence, in the caller's transaction: SELECT hold
//	             LOCK IN SHARE MODE; SELECT lease live (no lock, so renewals
//	             go on; if it looks dead, a locking read tells an old snapshot
//	             from a dead lease); bound idle time (MariaDB
//	             idle_transaction_timeout, MySQL wait_timeout)
//	Reap         CALL sqldlm_reap: SELECT dead leases ORDER BY expires_at
//	             LIMIT n FOR UPDATE SKIP LOCKED; per lease: lock its holds
//	             (SKIP LOCKED; a pinned lease waits for a later pass), SELECT
//	             their names (a result set), DELETE holds, waiters, lease;
//	             COMMIT; then DELETE idle lock rows LIMIT n; COMMIT
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
)

// Statuses returned by sqldlm_acquire.
const (
	statusGranted         = 1
	statusBlocked         = 2
	statusLeaseLost       = 3
	statusNotHeld         = 4
	statusUpgradeConflict = 5
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
	return dialect.Unique(names), nil
}

// Acquire calls sqldlm_acquire. Its last result set is the status row (seven
// columns, the first named status); before it, a takeover returns one result
// set per dead lease, with its conflicting holds as they were before the
// grant (seven columns, the first named owner). Those
// are sent before the procedure's COMMIT: they count only when the status
// row, sent after the COMMIT, reports a grant that took over as many holds
// (a takeover that ended Blocked was rolled back). call reads every result
// set, so an error the COMMIT raises is returned.
func (d mysqlDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	var (
		status    int
		token     sql.NullInt64
		owner     sql.NullString
		mode      sql.NullString
		expiresUS sql.NullInt64
		ahead     int
		tookOver  int
		got       bool
		taken     []dialect.TakenHold
	)
	err := d.call(ctx, db, func(rows *sql.Rows, columns []string) error {
		if len(columns) != 7 {
			return fmt.Errorf("sqldlm_acquire returned a result set of %d columns", len(columns))
		}
		switch columns[0] {
		case "status":
			if got {
				return errors.New("sqldlm_acquire returned two status rows")
			}
			got = true
			return rows.Scan(&status, &token, &owner, &mode, &expiresUS, &ahead, &tookOver)
		case "owner":
			if got {
				return errors.New("sqldlm_acquire returned a taken-over hold after its status")
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
				return fmt.Errorf("sqldlm_acquire returned a taken-over hold of mode %q", hmode)
			}
			h.Mode = dialect.Mode(hmode[0])
			h.ExpiredAt = time.UnixMicro(expiredUS).UTC()
			taken = append(taken, h)
			return nil
		default:
			return fmt.Errorf("sqldlm_acquire returned a result set starting with column %q", columns[0])
		}
	}, `CALL sqldlm_acquire(?, ?, ?, ?, ?, ?, ?, ?)`, p.Name, p.LeaseID, p.RequestID, string(p.Mode), p.Enqueue, p.UpgradeToken,
		p.Payload, p.LockDelay.Microseconds())
	if err != nil {
		return nil, err
	}
	if !got {
		return nil, errors.New("sqldlm_acquire returned no status")
	}
	switch status {
	case statusGranted:
		if !token.Valid {
			return nil, errors.New("sqldlm_acquire granted without a token")
		}
		res := &dialect.AcquireResult{Status: dialect.Granted, Token: token.Int64}
		if tookOver > 0 {
			if tookOver != len(taken) {
				return nil, fmt.Errorf("sqldlm_acquire took over %d holds but returned %d", tookOver, len(taken))
			}
			res.TookOver = taken
		}
		return res, nil
	case statusBlocked:
		b := &dialect.Blocker{Owner: owner.String, WaitersAhead: ahead}
		if mode.Valid && mode.String != "" {
			b.Mode = dialect.Mode(mode.String[0])
			b.ExpiresIn = time.Duration(expiresUS.Int64) * time.Microsecond
		}
		return &dialect.AcquireResult{Status: dialect.Blocked, Blocker: b}, nil
	case statusLeaseLost:
		return &dialect.AcquireResult{Status: dialect.LeaseLost}, nil
	case statusNotHeld:
		return &dialect.AcquireResult{Status: dialect.NotHeld}, nil
	case statusUpgradeConflict:
		return &dialect.AcquireResult{Status: dialect.UpgradeConflict}, nil
	default:
		return nil, fmt.Errorf("sqldlm_acquire returned unknown status %d", status)
	}
}

func (d mysqlDialect) Abandon(ctx context.Context, db *sql.DB, leaseID, requestID int64) ([]string, error) {
	var names []string
	err := d.call(ctx, db, func(rows *sql.Rows, _ []string) error {
		var name string
		if err := rows.Scan(&name); err != nil {
			return err
		}
		names = append(names, name)
		return nil
	}, `CALL sqldlm_abandon(?, ?)`, leaseID, requestID)
	if err != nil {
		return nil, err
	}
	return dialect.Unique(names), nil
}

func (d mysqlDialect) Release(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	return d.callBool(ctx, db, `CALL sqldlm_release(?, ?, ?)`, p.Name, p.LeaseID, p.Token)
}

// ReleaseTx deletes the hold with a plain statement in the caller's
// transaction: the release procedure starts a transaction of its own, which
// would commit the caller's.
func (d mysqlDialect) ReleaseTx(ctx context.Context, tx *sql.Tx, p *dialect.HoldRef) (bool, error) {
	res, err := tx.ExecContext(ctx, `DELETE FROM sqldlm_holders WHERE token = ? AND lease_id = ? AND name = ?`, p.Token, p.LeaseID, p.Name)
	if err != nil {
		return false, d.ClassifyError(err)
	}
	n, err := res.RowsAffected()
	return n > 0, d.ClassifyError(err)
}

func (d mysqlDialect) Downgrade(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	return d.callBool(ctx, db, `CALL sqldlm_downgrade(?, ?, ?)`, p.Name, p.LeaseID, p.Token)
}

// SetPayload calls sqldlm_set_payload. A payload over
// dialect.PayloadMaxBytes is an error (the procedure runs in strict mode).
func (d mysqlDialect) SetPayload(ctx context.Context, db *sql.DB, p *dialect.HoldRef, payload string) (bool, error) {
	return d.callBool(ctx, db, `CALL sqldlm_set_payload(?, ?, ?, ?)`, p.Name, p.LeaseID, p.Token, payload)
}

// Fence locks the hold with a shared lock inside tx and checks its lease by
// SYSDATE(6). It then bounds how long tx may sit idle to idleTimeout, rounded
// up to whole seconds: on MariaDB with idle_transaction_timeout, on MySQL 8
// (which has no idle-in-transaction timeout) with wait_timeout, which ends
// the connection, and so rolls back its transaction, once it has been idle
// that long, in or out of a transaction. The setting stays on tx's pooled
// connection after tx ends.
//
// At REPEATABLE READ, Fence's read of the lease sees the snapshot taken by
// tx's first read. When that snapshot shows the lease expired but the latest
// version is live (it was renewed since), Fence returns an error matching
// dialect.ErrSerialization: retry the whole transaction. At SERIALIZABLE,
// InnoDB turns that read into a locking one, so the lease's renewals wait
// until tx ends.
func (d mysqlDialect) Fence(ctx context.Context, tx *sql.Tx, p *dialect.HoldRef, idleTimeout time.Duration) (bool, error) {
	idle := int64(0)
	if idleTimeout > 0 {
		idle = int64(idleTimeout / time.Second)
		if idleTimeout%time.Second != 0 {
			idle++
		}
		idle = min(idle, maxIdleSeconds)
	}
	var status int
	if err := tx.QueryRowContext(ctx, `CALL sqldlm_fence(?, ?, ?, ?)`, p.Name, p.LeaseID, p.Token, idle).Scan(&status); err != nil {
		return false, d.ClassifyError(err)
	}
	switch status {
	case 0:
		return false, nil
	case 1:
		return true, nil
	case 2:
		return false, dialect.NewError(dialect.ErrSerialization, "",
			errors.New("fence: the transaction's snapshot predates the lease's last renewal; retry the transaction"))
	default:
		return false, fmt.Errorf("sqldlm_fence returned unknown status %d", status)
	}
}

func (d mysqlDialect) Reap(ctx context.Context, db *sql.DB, limit int, idleAfter time.Duration) (*dialect.ReapResult, error) {
	if limit <= 0 || limit > math.MaxInt32 {
		limit = math.MaxInt32
	}
	idleAfter = min(idleAfter, maxIdleAfter)
	res := &dialect.ReapResult{}
	var counted bool
	err := d.call(ctx, db, func(rows *sql.Rows, columns []string) error {
		if len(columns) == 4 {
			counted = true
			return rows.Scan(&res.Leases, &res.Holds, &res.Waiters, &res.IdleLocks)
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
	res.Freed = dialect.Unique(res.Freed)
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
