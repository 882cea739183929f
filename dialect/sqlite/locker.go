package sqlite

// SQLite's lock operations run in Go, inside BEGIN IMMEDIATE transactions:
// SQLite has one writer at a time, so each operation sees and changes the
// tables alone, and "now" is read once after the write lock is taken. There
// is no server round trip to save. The tables, indexes and views are in
// schema/<table>.sql, generated from the migrations (migrations/*.sql, the
// source). Statements per operation:
//
//	CreateLease  INSERT lease
//	RenewLease   UPDATE lease WHERE live
//	Acquire      read-only first (below), then in a write transaction:
//	             SELECT own lease and the request's withdrawal record (a
//	             withdrawn request is answered Withdrawn); SELECT hold of this request
//	             (idempotent retry); [upgrade: SELECT own shared hold, SELECT other
//	             upgraders]; SELECT holds of the name with their leases;
//	             SELECT live waiters; then either [UPDATE dead leases, DELETE
//	             their holds] INSERT hold, [DELETE upgraded hold], UPSERT lock
//	             row, DELETE own waiter, or INSERT waiter
//	Abandon      INSERT withdrawal record, DELETE waiter, DELETE hold (or,
//	             for an upgrade, SELECT its token)
//	Release      DELETE hold
//	Downgrade    UPDATE hold WHERE lease live
//	Fence        UPDATE hold SET mode = mode WHERE lease live (takes the
//	             database's write lock, held until the caller's tx ends)

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

// writeTx runs fn in a BEGIN IMMEDIATE transaction on one connection, with
// the database's clock read after the write lock was taken.
func (d *sqliteDialect) writeTx(ctx context.Context, db *sql.DB, fn func(conn *sql.Conn, now int64) error) error {
	return d.writeTxWaiting(ctx, db, busyTimeout, fn)
}

// writeTxWaiting is writeTx waiting at most wait for the write lock (an
// error matching ErrLockTimeout after that). The connection goes back to
// the pool with the usual busy timeout. With wait 0 it does not wait for
// the gate either: a write of this process in the gate may be waiting for
// the very transaction whose end the caller asks about (PendingOutcome).
func (d *sqliteDialect) writeTxWaiting(ctx context.Context, db *sql.DB, wait time.Duration, fn func(conn *sql.Conn, now int64) error) (err error) {
	var leave func()
	if wait == 0 {
		var ok bool
		if leave, ok = d.tryEnter(db); !ok {
			return dialect.NewError(dialect.ErrLockTimeout, "", errGateBusy)
		}
	} else if leave, err = d.enter(ctx, db); err != nil {
		return err
	}
	defer leave()
	conn, err := db.Conn(ctx)
	if err != nil {
		return d.ClassifyError(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PRAGMA busy_timeout = %d`, wait.Milliseconds())); err != nil {
		return d.ClassifyError(err)
	}
	if wait != busyTimeout {
		defer func() {
			if _, rErr := conn.ExecContext(context.WithoutCancel(ctx), fmt.Sprintf(`PRAGMA busy_timeout = %d`, busyTimeout.Milliseconds())); rErr != nil {
				_ = conn.Raw(func(any) error { return driver.ErrBadConn })
			}
		}()
	}
	if _, err := conn.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
		endFailedBegin(ctx, conn)
		return d.ClassifyError(err)
	}
	defer func() {
		if err == nil {
			if _, err = conn.ExecContext(ctx, `COMMIT`); err == nil {
				return
			}
		}
		// Roll back even if ctx ended, and drop the connection if that fails,
		// so it never returns to the pool inside a transaction.
		if _, rbErr := conn.ExecContext(context.WithoutCancel(ctx), `ROLLBACK`); rbErr != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		err = d.ClassifyError(err)
	}()
	var now int64
	if err := conn.QueryRowContext(ctx, `SELECT `+nowMicros).Scan(&now); err != nil {
		return err
	}
	return fn(conn, now)
}

// endFailedBegin makes sure a BEGIN that reported an error left no
// transaction open on conn: the driver reports ctx's error when ctx ended
// while the statement ran, even if the BEGIN itself succeeded, and the
// connection would then go back to the pool inside a transaction (the next
// BEGIN on it fails with "cannot start a transaction within a
// transaction"). It rolls back whatever is open, and drops the connection
// when it cannot tell.
func endFailedBegin(ctx context.Context, conn *sql.Conn) {
	_, err := conn.ExecContext(context.WithoutCancel(ctx), `ROLLBACK`)
	if err != nil && !strings.Contains(err.Error(), "no transaction is active") {
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

// exec runs one writing statement through the write gate.
func (d *sqliteDialect) exec(ctx context.Context, db *sql.DB, query string, args ...any) (sql.Result, error) {
	leave, err := d.enter(ctx, db)
	if err != nil {
		return nil, err
	}
	defer leave()
	return db.ExecContext(ctx, query, args...)
}

func (d *sqliteDialect) CreateLease(ctx context.Context, db *sql.DB, p *dialect.CreateLeaseParams) error {
	_, err := d.exec(ctx, db, `INSERT INTO sqldlm_leases (id, owner, ttl_us, created_at, renewed_at, expires_at)
		SELECT ?1, ?2, ?3, n, n, n + ?3 FROM (SELECT `+nowMicros+` AS n)`,
		p.ID, p.Owner, p.TTL.Microseconds())
	return d.ClassifyError(err)
}

func (d *sqliteDialect) RenewLease(ctx context.Context, db *sql.DB, leaseID int64) (bool, error) {
	res, err := d.exec(ctx, db, `UPDATE sqldlm_leases SET renewed_at = n, expires_at = n + ttl_us
		FROM (SELECT `+nowMicros+` AS n)
		WHERE id = ? AND broken_at IS NULL AND expires_at > n`, leaseID)
	return affected(res, err, d)
}

func (d *sqliteDialect) DeleteLease(ctx context.Context, db *sql.DB, leaseID int64) (names []string, err error) {
	err = d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		if err := auditHolds(ctx, conn, now, dialect.AuditRelease, `'lease closed'`, nil, `h.lease_id = ?`, leaseID); err != nil {
			return err
		}
		names, err = queryStrings(ctx, conn, `DELETE FROM sqldlm_holders WHERE lease_id = ? RETURNING name`, leaseID)
		if err != nil {
			return err
		}
		if _, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_waiters WHERE lease_id = ?`, leaseID); err != nil {
			return err
		}
		if _, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_withdrawn WHERE lease_id = ?`, leaseID); err != nil {
			return err
		}
		_, err = conn.ExecContext(ctx, `DELETE FROM sqldlm_leases WHERE id = ?`, leaseID)
		return err
	})
	return sqlutil.Unique(names), err
}

// hold is a holder row of the requested name with its lease's state.
type hold struct {
	token, leaseID int64
	mode           dialect.Mode
	owner, payload string
	expiresAt      int64
	deadSince      int64 // the earlier of expires_at and broken_at
	live, broken   bool
}

// errNeedsWrite is returned by a read-only acquire that would have to write.
var errNeedsWrite = errors.New("needs the write lock")

// errGateBusy: another write of this process holds the database's gate.
var errGateBusy = errors.New("another write of this process is in progress")

// Acquire first looks in a read-only transaction, which never takes SQLite's
// write lock (WAL readers do not block the writer): a blocked attempt that
// has nothing to write, the common case of a polling waiter, ends there.
// Only an attempt that may be granted, or must record its waiter row, runs
// again in a write transaction, which decides from scratch.
func (d *sqliteDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (res *dialect.AcquireResult, err error) {
	err = d.readTx(ctx, db, func(conn *sql.Conn, now int64) error {
		res, err = d.acquire(ctx, conn, now, p, true)
		return err
	})
	if err == nil {
		return res, nil
	}
	if !errors.Is(err, errNeedsWrite) {
		return nil, err
	}
	err = d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		res, err = d.acquire(ctx, conn, now, p, false)
		return err
	})
	return res, err
}

// readTx runs fn in a read-only (deferred) transaction.
func (d *sqliteDialect) readTx(ctx context.Context, db *sql.DB, fn func(conn *sql.Conn, now int64) error) (err error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return d.ClassifyError(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `BEGIN DEFERRED`); err != nil {
		endFailedBegin(ctx, conn)
		return d.ClassifyError(err)
	}
	defer func() {
		if _, rbErr := conn.ExecContext(context.WithoutCancel(ctx), `ROLLBACK`); rbErr != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		if !errors.Is(err, errNeedsWrite) {
			err = d.ClassifyError(err)
		}
	}()
	var now int64
	if err := conn.QueryRowContext(ctx, `SELECT `+nowMicros).Scan(&now); err != nil {
		return err
	}
	return fn(conn, now)
}

// acquire decides one attempt. With readOnly it returns errNeedsWrite
// instead of writing anything.
func (d *sqliteDialect) acquire(ctx context.Context, conn dialect.Querier, now int64, p *dialect.AcquireParams, readOnly bool) (*dialect.AcquireResult, error) {
	// The own lease, and whether the request was withdrawn (in the same
	// statement: a polling waiter pays for every one).
	var live, withdrawn bool
	var owner string
	err := conn.QueryRowContext(ctx, `SELECT broken_at IS NULL AND expires_at > ?1, owner,
			EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = ?2 AND request_id = ?3)
		FROM sqldlm_leases WHERE id = ?2`, now, p.LeaseID, p.RequestID).Scan(&live, &owner, &withdrawn)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !live) {
		return &dialect.AcquireResult{Status: dialect.LeaseLost}, nil
	}
	if err != nil {
		return nil, err
	}
	// A withdrawn request is never granted or queued, not even as the
	// repeat of a request that obtained a hold (an upgrade's withdrawal
	// keeps that hold, which belongs to the caller's handle again).
	if withdrawn {
		return &dialect.AcquireResult{Status: dialect.Withdrawn}, nil
	}

	// A repeated request returns the hold it already obtained.
	var token int64
	err = conn.QueryRowContext(ctx, `SELECT token FROM sqldlm_holders WHERE lease_id = ? AND request_id = ?`, p.LeaseID, p.RequestID).Scan(&token)
	if err == nil {
		return &dialect.AcquireResult{Status: dialect.Granted, Token: token}, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}

	upgrade := p.UpgradeToken != 0
	if upgrade {
		var mode string
		err := conn.QueryRowContext(ctx, `SELECT mode FROM sqldlm_holders WHERE token = ? AND lease_id = ? AND name = ?`,
			p.UpgradeToken, p.LeaseID, p.Name).Scan(&mode)
		if errors.Is(err, sql.ErrNoRows) {
			return &dialect.AcquireResult{Status: dialect.NotHeld}, nil
		}
		if err != nil {
			return nil, err
		}
		var others int
		if err := conn.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
			WHERE w.name = ? AND w.upgrade_token IS NOT NULL AND w.upgrade_token <> ?
			  AND l.broken_at IS NULL AND l.expires_at > ?`, p.Name, p.UpgradeToken, now).Scan(&others); err != nil {
			return nil, err
		}
		if others > 0 {
			return &dialect.AcquireResult{Status: dialect.UpgradeConflict}, nil
		}
	}

	holds, err := d.holds(ctx, conn, p.Name, now)
	if err != nil {
		return nil, err
	}
	var blocker *dialect.Blocker
	var dead []int64
	var taken []dialect.TakenHold
	for _, h := range holds {
		if h.token == p.UpgradeToken || !p.Mode.Conflicts(h.mode) {
			continue
		}
		if !h.live {
			if wait := h.deadSince + p.LockDelay.Microseconds() - now; wait > 0 {
				// Lock-delay: the dead holder's in-flight work drains first.
				if blocker == nil || wait > blocker.ExpiresIn.Microseconds() {
					blocker = &dialect.Blocker{Owner: h.owner, Mode: h.mode, ExpiresIn: sqlutil.DurationMicros(wait)}
				}
				continue
			}
			dead = append(dead, h.leaseID)
			taken = append(taken, dialect.TakenHold{Owner: h.owner, LeaseID: h.leaseID, Token: h.token, Mode: h.mode,
				ExpiredAt: sqlutil.TimeMicros(h.expiresAt), Broken: h.broken, Payload: h.payload})
			continue
		}
		if blocker == nil || h.expiresAt > now+blocker.ExpiresIn.Microseconds() {
			blocker = &dialect.Blocker{Owner: h.owner, Mode: h.mode, ExpiresIn: time.Duration(h.expiresAt-now) * time.Microsecond}
		}
	}

	ahead, err := d.waitersAhead(ctx, conn, p, now)
	if err != nil {
		return nil, err
	}
	if blocker != nil || ahead > 0 {
		if blocker == nil {
			blocker = &dialect.Blocker{}
		}
		blocker.WaitersAhead = ahead
		if p.Enqueue && readOnly {
			var queued int
			if err := conn.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_waiters WHERE lease_id = ? AND request_id = ?`,
				p.LeaseID, p.RequestID).Scan(&queued); err != nil {
				return nil, err
			}
			if queued == 0 {
				return nil, errNeedsWrite
			}
		} else if p.Enqueue {
			var upgradeToken any
			if upgrade {
				upgradeToken = p.UpgradeToken
			}
			if _, err := conn.ExecContext(ctx, `INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since)
				VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (lease_id, request_id) DO NOTHING`,
				p.Name, p.LeaseID, p.RequestID, string(p.Mode), upgradeToken, now); err != nil {
				return nil, err
			}
		}
		return &dialect.AcquireResult{Status: dialect.Blocked, Blocker: blocker}, nil
	}

	if readOnly {
		return nil, errNeedsWrite
	}
	// Granted. Take over the holds of dead leases first: mark those leases
	// broken, so that no late renewal revives them, and delete their holds.
	for _, leaseID := range sqlutil.Unique(dead) {
		if _, err := conn.ExecContext(ctx, `UPDATE sqldlm_leases SET broken_at = ? WHERE id = ? AND broken_at IS NULL`, now, leaseID); err != nil {
			return nil, err
		}
		if err := auditHolds(ctx, conn, now, dialect.AuditTakeover, `?`, []any{"by " + owner},
			`h.name = ? AND h.lease_id = ?`, p.Name, leaseID); err != nil {
			return nil, err
		}
		if _, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_holders WHERE name = ? AND lease_id = ?`, p.Name, leaseID); err != nil {
			return nil, err
		}
	}
	if err := conn.QueryRowContext(ctx, `INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
		VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?6 = '' AND ?7 <> 0 THEN COALESCE((SELECT payload FROM sqldlm_holders WHERE token = ?7), '') ELSE ?6 END)
		RETURNING token`, p.Name, p.LeaseID, p.RequestID, string(p.Mode), now, p.Payload, p.UpgradeToken).Scan(&token); err != nil {
		return nil, err
	}
	event, detail := dialect.AuditGrant, ""
	if upgrade {
		event, detail = dialect.AuditUpgrade, fmt.Sprintf("from token %d", p.UpgradeToken)
	}
	if err := auditHolds(ctx, conn, now, event, `?`, []any{detail}, `h.token = ?`, token); err != nil {
		return nil, err
	}
	if upgrade {
		if _, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_holders WHERE token = ?`, p.UpgradeToken); err != nil {
			return nil, err
		}
	}
	if _, err := conn.ExecContext(ctx, `INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at`, p.Name, token, now); err != nil {
		return nil, err
	}
	if _, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_waiters WHERE lease_id = ? AND request_id = ?`, p.LeaseID, p.RequestID); err != nil {
		return nil, err
	}
	return &dialect.AcquireResult{Status: dialect.Granted, Token: token, TookOver: taken}, nil
}

// holds returns the holds of name with the state of their leases; a hold
// whose lease row is missing counts as dead.
func (d *sqliteDialect) holds(ctx context.Context, conn dialect.Querier, name string, now int64) ([]hold, error) {
	rows, err := conn.QueryContext(ctx, `SELECT h.token, h.lease_id, h.mode, COALESCE(l.owner, ''), COALESCE(l.expires_at, 0),
			COALESCE(l.broken_at IS NULL AND l.expires_at > ?, 0), COALESCE(l.broken_at IS NOT NULL, 0),
			COALESCE(MIN(l.expires_at, COALESCE(l.broken_at, l.expires_at)), 0), h.payload
		FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
		WHERE h.name = ?`, now, name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var holds []hold
	for rows.Next() {
		var h hold
		var mode string
		if err := rows.Scan(&h.token, &h.leaseID, &mode, &h.owner, &h.expiresAt, &h.live, &h.broken, &h.deadSince, &h.payload); err != nil {
			return nil, err
		}
		h.mode = dialect.Mode(mode[0])
		holds = append(holds, h)
	}
	return holds, rows.Err()
}

// waitersAhead counts the live waiters that must be served before p: for an
// upgrade none (upgrades go first; a competing upgrade was refused earlier),
// otherwise any pending upgrade, and earlier waiters whose mode conflicts.
func (d *sqliteDialect) waitersAhead(ctx context.Context, conn dialect.Querier, p *dialect.AcquireParams, now int64) (int, error) {
	if p.UpgradeToken != 0 {
		return 0, nil
	}
	var ahead int
	err := conn.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
		WHERE w.name = ?1 AND l.broken_at IS NULL AND l.expires_at > ?2
		  AND NOT (w.lease_id = ?3 AND w.request_id = ?4)
		  AND (w.upgrade_token IS NOT NULL
		       OR ((?5 = 'X' OR w.mode = 'X')
		           AND w.id < COALESCE((SELECT id FROM sqldlm_waiters WHERE lease_id = ?3 AND request_id = ?4), 9223372036854775807)))`,
		p.Name, now, p.LeaseID, p.RequestID, string(p.Mode)).Scan(&ahead)
	return ahead, err
}

// Abandon withdraws a request for good, in one write transaction: it
// records the withdrawal (if the lease row exists: a request of a missing
// lease is answered LeaseLost anyway), deletes the request's waiter row, and
// deletes the hold it obtained or, with KeepHold, reports its token. An
// Acquire of the request that runs later answers Withdrawn (see acquire);
// one that ran earlier committed before the write lock was taken here.
func (d *sqliteDialect) Abandon(ctx context.Context, db *sql.DB, p *dialect.AbandonParams) (res *dialect.AbandonResult, err error) {
	res = &dialect.AbandonResult{}
	err = d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		if _, err := conn.ExecContext(ctx, `INSERT INTO sqldlm_withdrawn (lease_id, request_id, name, withdrawn_at)
			SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM sqldlm_leases WHERE id = ?1)
			ON CONFLICT (lease_id, request_id) DO NOTHING`, p.LeaseID, p.RequestID, p.Name, now); err != nil {
			return err
		}
		if _, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_waiters WHERE lease_id = ? AND request_id = ?`, p.LeaseID, p.RequestID); err != nil {
			return err
		}
		if p.KeepHold {
			err := conn.QueryRowContext(ctx, `SELECT token FROM sqldlm_holders WHERE lease_id = ? AND request_id = ?`,
				p.LeaseID, p.RequestID).Scan(&res.Kept)
			if errors.Is(err, sql.ErrNoRows) {
				return nil
			}
			return err
		}
		if err := auditHolds(ctx, conn, now, dialect.AuditRelease, `'abandoned'`, nil,
			`h.lease_id = ? AND h.request_id = ?`, p.LeaseID, p.RequestID); err != nil {
			return err
		}
		names, err := queryStrings(ctx, conn, `DELETE FROM sqldlm_holders WHERE lease_id = ? AND request_id = ? RETURNING name`, p.LeaseID, p.RequestID)
		res.Freed = sqlutil.Unique(names)
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (d *sqliteDialect) Release(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (ok bool, err error) {
	err = d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		ok, err = release(ctx, conn, now, p)
		return err
	})
	return ok, err
}

// ReleaseTx deletes the hold in the caller's transaction.
func (d *sqliteDialect) ReleaseTx(ctx context.Context, _ *sql.DB, tx *sql.Tx, p *dialect.HoldRef) (bool, error) {
	now, err := readNow(ctx, tx)
	if err != nil {
		return false, d.ClassifyError(err)
	}
	ok, err := release(ctx, tx, now, p)
	return ok, d.ClassifyError(err)
}

func release(ctx context.Context, q dialect.Querier, now int64, p *dialect.HoldRef) (bool, error) {
	const where = `h.token = ? AND h.lease_id = ? AND h.name = ?`
	if err := auditHolds(ctx, q, now, dialect.AuditRelease, noDetail, nil, where, p.Token, p.LeaseID, p.Name); err != nil {
		return false, err
	}
	res, err := q.ExecContext(ctx, `DELETE FROM sqldlm_holders AS h WHERE `+where, p.Token, p.LeaseID, p.Name)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

func readNow(ctx context.Context, q dialect.Querier) (now int64, err error) {
	err = q.QueryRowContext(ctx, `SELECT `+nowMicros).Scan(&now)
	return now, err
}

// liveHold is the condition that the hold (?1 token, ?2 lease, ?3 name)
// belongs to a live lease.
const liveHold = `token = ?1 AND lease_id = ?2 AND name = ?3 AND EXISTS (SELECT 1 FROM sqldlm_leases
	WHERE id = ?2 AND broken_at IS NULL AND expires_at > ` + nowMicros + `)`

func (d *sqliteDialect) Downgrade(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (ok bool, err error) {
	err = d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		res, err := conn.ExecContext(ctx, `UPDATE sqldlm_holders SET mode = 'S' WHERE `+liveHold, p.Token, p.LeaseID, p.Name)
		if ok, err = affected(res, err, d); err != nil || !ok {
			return err
		}
		return auditHolds(ctx, conn, now, dialect.AuditDowngrade, noDetail, nil, `h.token = ?`, p.Token)
	})
	return ok, err
}

func (d *sqliteDialect) SetPayload(ctx context.Context, db *sql.DB, p *dialect.HoldRef, payload string) (bool, error) {
	res, err := d.exec(ctx, db, `UPDATE sqldlm_holders SET payload = ?4 WHERE `+liveHold, p.Token, p.LeaseID, p.Name, payload)
	return affected(res, err, d)
}

// Fence writes the hold's row (changing nothing) inside the caller's
// transaction: that takes SQLite's database-wide write lock, so no other
// connection can commit a takeover or release until the transaction ends.
// SQLite has no server to end an idle transaction: idleTimeout is ignored,
// and a holder paused inside a fenced transaction blocks every writer.
func (d *sqliteDialect) Fence(ctx context.Context, _ *sql.DB, tx *sql.Tx, p *dialect.HoldRef, _ time.Duration) (bool, error) {
	res, err := tx.ExecContext(ctx, `UPDATE sqldlm_holders SET mode = mode WHERE `+liveHold, p.Token, p.LeaseID, p.Name)
	return affected(res, err, d)
}

func (d *sqliteDialect) Reap(ctx context.Context, db *sql.DB, limit int, idleAfter time.Duration) (res *dialect.ReapResult, err error) {
	res = &dialect.ReapResult{}
	err = d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		const dead = `SELECT id FROM sqldlm_leases WHERE broken_at IS NOT NULL OR expires_at <= ?1 ORDER BY expires_at LIMIT ?2`
		if err := auditHolds(ctx, conn, now, dialect.AuditExpire, noDetail, nil,
			`h.lease_id IN (SELECT id FROM sqldlm_leases WHERE broken_at IS NOT NULL OR expires_at <= ? ORDER BY expires_at LIMIT ?)`,
			now, limit); err != nil {
			return err
		}
		names, err := queryStrings(ctx, conn, `DELETE FROM sqldlm_holders WHERE lease_id IN (`+dead+`) RETURNING name`, now, limit)
		if err != nil {
			return err
		}
		res.Holds, res.Freed = len(names), sqlutil.Unique(names)
		steps := []struct {
			n     *int
			query string
			args  []any
		}{
			{&res.Waiters, `DELETE FROM sqldlm_waiters WHERE lease_id IN (` + dead + `)`, []any{now, limit}},
			// Withdrawal records go with their lease, and after
			// WithdrawnRetention (no statement of theirs can still run).
			{new(int), `DELETE FROM sqldlm_withdrawn WHERE lease_id IN (` + dead + `)`, []any{now, limit}},
			{new(int), `DELETE FROM sqldlm_withdrawn WHERE (lease_id, request_id) IN (SELECT lease_id, request_id
				FROM sqldlm_withdrawn WHERE withdrawn_at < ?1 - ?2 ORDER BY withdrawn_at LIMIT ?3)`,
				[]any{now, dialect.WithdrawnRetention.Microseconds(), limit}},
			{&res.Leases, `DELETE FROM sqldlm_leases WHERE id IN (` + dead + `)`, []any{now, limit}},
			{&res.IdleLocks, `DELETE FROM sqldlm_locks WHERE name IN (SELECT name FROM sqldlm_locks l
				WHERE updated_at < ?1 - ?2
				  AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = l.name)
				  AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = l.name)
				LIMIT ?3)`, []any{now, idleAfter.Microseconds(), limit}},
			{&res.AuditRows, `DELETE FROM sqldlm_audit WHERE id IN (SELECT id FROM sqldlm_audit
				WHERE at < ?1 - (SELECT audit_retention_us FROM sqldlm_settings WHERE id = 1) ORDER BY id LIMIT ?2)`, []any{now, limit}},
		}
		for _, s := range steps {
			r, err := conn.ExecContext(ctx, s.query, s.args...)
			if err != nil {
				return err
			}
			n, err := r.RowsAffected()
			if err != nil {
				return err
			}
			*s.n = int(n)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func affected(res sql.Result, err error, d *sqliteDialect) (bool, error) {
	if err != nil {
		return false, d.ClassifyError(err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, d.ClassifyError(err)
	}
	return n > 0, nil
}

func queryStrings(ctx context.Context, conn *sql.Conn, query string, args ...any) ([]string, error) {
	rows, err := conn.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// AcquireTx runs the acquire in the caller's transaction. SQLite
// transactions are serializable, so any isolation will do; the first write
// takes the database's write lock, which the caller's transaction then keeps
// until it ends (every other writer, the lease's renewal included, waits).
//
// SQLite needs no pending record: a transaction that granted holds the
// write lock until it ends, and the hold tells whether it committed (see
// PendingOutcome). Writing a record outside the caller's transaction would
// even break it: a deferred transaction that has read cannot write after
// another connection committed (SQLITE_BUSY_SNAPSHOT).
func (d *sqliteDialect) AcquireTx(ctx context.Context, tx *sql.Tx, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	// Write first: that takes the write lock now (waiting for other writers
	// as the busy timeout allows), so no other connection can commit between
	// the reads below and the grant, which would fail the transaction with
	// SQLITE_BUSY_SNAPSHOT.
	if _, err := tx.ExecContext(ctx, `UPDATE sqldlm_settings SET audit = audit WHERE id = 1`); err != nil {
		return nil, d.ClassifyError(err)
	}
	now, err := readNow(ctx, tx)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	res, err := d.acquire(ctx, tx, now, &dialect.AcquireParams{Name: p.Name, LeaseID: p.LeaseID, RequestID: p.RequestID,
		Mode: p.Mode, Payload: p.Payload, LockDelay: p.LockDelay}, false)
	return res, d.ClassifyError(err)
}

// CreatePending writes nothing on SQLite (see AcquireTx).
func (d *sqliteDialect) CreatePending(context.Context, *sql.DB, int64, int64) error { return nil }

// PendingOutcome: while the write lock cannot be had at once, the
// transaction may be open (TxOpen: a write lock held by anyone else, or
// this process's gate held by another write, reads the same; ask again
// later). Once it can, the transaction has ended, and
// committed if and only if the request's hold exists (a hold released
// since reads as not committed, which is as good: nothing is left to undo).
// It writes nothing, so it never breaks other transactions' snapshots.
func (d *sqliteDialect) PendingOutcome(ctx context.Context, db *sql.DB, leaseID, requestID int64) (dialect.TxOutcome, error) {
	var held int
	err := d.writeTxWaiting(ctx, db, 0, func(conn *sql.Conn, _ int64) error {
		return conn.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_holders WHERE lease_id = ? AND request_id = ?`,
			leaseID, requestID).Scan(&held)
	})
	switch {
	case errors.Is(err, dialect.ErrLockTimeout):
		return dialect.TxOpen, nil
	case err != nil:
		return 0, err
	case held > 0:
		return dialect.TxCommitted, nil
	}
	return dialect.TxNotCommitted, nil
}
