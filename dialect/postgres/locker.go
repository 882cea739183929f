package postgres

// PostgreSQL's lock operations run in the server, as PL/pgSQL functions.
// The live definition of each function, table and view is in
// schema/<name>.sql, generated from the migrations (migrations/*.sql, the
// source). The header of migrations/00001_create_lock_tables.sql explains
// the lock order and the checks, each later migration's header what its
// version changed, and migrations/HISTORY.md lists the versions.
//
// Each method is one statement, so one round trip and, in autocommit mode,
// one transaction and one commit. Every expiry decision uses
// clock_timestamp(), read after the row locks it depends on. While the
// audit setting is on, the functions that grant, upgrade, downgrade or
// delete holds also INSERT their audit rows ([audit] below) in the statement
// that changes them (a data-modifying CTE joined to the setting's row),
// except for Acquire's grant row and Release's row, which a statement of
// their own writes only while the setting is on. The functions that free a name wake its
// queue with sqldlm_wake, which notifies only the live waiters at its head
// ("<lease id> <request id> <name>", see Listen).
//
// Since schema version 13 a name's only hold, when the fast path granted
// it, is kept in the name's row of sqldlm_locks (x_lease, x_request,
// x_mode, x_since, x_payload; its token is the row's), not in a row of
// sqldlm_holders: "hold" below means either, and sqldlm_spill moves an
// inline hold to sqldlm_holders (docs/one-row-design.md). What each
// operation runs:
//
//	CreateLease  INSERT lease (expiry from clock_timestamp(); its epoch
//	             column's default is sqldlm_current_epoch's epoch; the
//	             trigger sqldlm_record_ttl raises sqldlm_epoch.max_ttl_us
//	             to its TTL if longer, the freeze after a promotion)
//	RenewLease   UPDATE lease WHERE live and of the current epoch
//	             (sqldlm_current_epoch, once per statement); a renewal that
//	             waited for a row lock re-checks the condition, with a fresh
//	             clock, on the row's newest version
//	DeleteLease  sqldlm_delete_lease: lock the names' rows that hold an
//	             inline hold of the lease FOR NO KEY UPDATE (a scan), then
//	             the lease FOR UPDATE, DELETE its holds and clear its
//	             inline ones [audit], DELETE its waiters, pending records
//	             and withdrawal records, DELETE it, sqldlm_wake the names
//	Acquire      sqldlm_acquire, every lock wait bounded by its
//	             function-level lock_timeout of 1s (55P03; the client
//	             retries). First sqldlm_current_epoch. Fast path (not an
//	             upgrade, outside the freeze), one statement: lock the own
//	             lease FOR KEY SHARE where live and of the current epoch,
//	             UPDATE the name's row's token (from the holds' sequence)
//	             and inline hold where the row is the version this
//	             statement's snapshot read, has no inline hold, and the
//	             snapshot shows no hold or waiter of the name, no hold of
//	             the request and no withdrawal of it (a row updated
//	             meanwhile is re-checked by PostgreSQL on its newest
//	             version: another xmin, nothing granted); then SELECT the
//	             own lease live with a clock after the locks (not: clear
//	             the inline hold, lease_lost) [audit]; if the statement changed nothing,
//	             on: a read of the own lease's epoch: a lease of an older
//	             epoch is lost (lease_lost); during the freeze after an epoch
//	             change, blocked by "(failover)" until the freeze ends.
//	             Phase 1, no row locks: SELECT the
//	             request's withdrawal record (withdrawn: return), one SELECT
//	             (sqldlm_evaluate) of own lease, hold of this request
//	             (idempotent retry; returned after a transactional WAL
//	             message, so the commit waits for a synchronous standby),
//	             own waiter, [upgrade: own shared hold,
//	             other upgraders], conflicting holds of live leases or of
//	             leases dead for less than the lock delay, live waiters ahead;
//	             if blocked: [first enqueue, not an upgrade: lock the name's
//	             row FOR KEY SHARE (phase 2 if it is gone), own lease FOR KEY
//	             SHARE, SELECT the withdrawal record again (withdrawn:
//	             return), lock the name's row FOR SHARE if it holds an
//	             inline hold, its holds and waiter rows FOR SHARE
//	             (sqldlm_enqueue_guard: a removal that comes later waits for
//	             this commit, so it sees the waiter it must wake) and
//	             evaluate again (no longer blocked: return blocked with no
//	             holder, so the client asks again at once), INSERT waiter],
//	             return. Phase 2: lock the name's
//	             row FOR UPDATE (INSERT it if missing) and move its inline
//	             hold to sqldlm_holders (sqldlm_spill), own lease FOR KEY
//	             SHARE; SELECT the withdrawal record again (withdrawn: return,
//	             nothing written); evaluate again; lock the leases of
//	             conflicting holds dead for the lock delay FOR NO KEY UPDATE
//	             and evaluate again, until stable; [lock their holds of the
//	             name FOR UPDATE SKIP LOCKED: blocked, expiry unknown (NULL),
//	             if a fence pins one, [INSERT waiter]]; then SELECT the audit
//	             setting and the own lease's owner, [DELETE upgraded hold
//	             RETURNING its payload], DELETE the dead leases' (and
//	             orphaned) holds of the name RETURNING them, joined to their
//	             leases (the holds taken over, with their payloads) [audit:
//	             takeover], [UPDATE dead leases SET broken_at], INSERT hold
//	             (with its payload, or the upgraded hold's) RETURNING token,
//	             [audit: grant or upgrade], UPDATE the name's row, DELETE own
//	             waiter; or, if blocked after all, [first enqueue:
//	             sqldlm_enqueue_guard's locks, evaluate again, INSERT waiter]
//	AcquireTx    sqldlm_acquire_tx, in the caller's tx: refuse any isolation
//	             but READ COMMITTED (SQLSTATE SQD01); Acquire's statements
//	             (without enqueue or upgrade); if granted, move a fast
//	             grant's inline hold to sqldlm_holders (the row is locked
//	             already) and DELETE the pending record. It runs sqldlm_acquire, whose lock_timeout of 1s ends
//	             with it: the caller's own setting is back on return
//	CreatePending  INSERT pending record (created_at from clock_timestamp())
//	PendingOutcome sqldlm_pending_outcome: DELETE the record if it can be
//	             locked FOR UPDATE SKIP LOCKED (not committed); otherwise
//	             SELECT it plainly: there (open) or gone (committed)
//	Abandon      sqldlm_abandon, lock_timeout 1s: lock the name's row FOR
//	             UPDATE (INSERT it if missing), own lease FOR KEY SHARE;
//	             [lease there: UPDATE the name's row (a new version, which a
//	             fast grant waiting for the row re-checks), INSERT the
//	             withdrawal record ON CONFLICT DO NOTHING]; DELETE waiter;
//	             clear the request's inline hold or DELETE its hold [audit],
//	             or with KeepHold SELECT its token; sqldlm_wake the name. The record
//	             makes the withdrawal final: every statement that inserts a
//	             hold or a waiter row checks it after the name's row lock
//	             (which conflicts with Abandon's FOR UPDATE) and the own
//	             lease's, or, in Acquire's fast path, on a snapshot that is
//	             re-checked when Abandon's update of the row came first, so a
//	             late statement of a withdrawn request grants and queues
//	             nothing (status withdrawn)
//	Release      sqldlm_release: clear the inline hold (UPDATE the name's
//	             row), or else DELETE the hold, RETURNING it and the audit
//	             setting, [audit: INSERT the row]; if anyone waits,
//	             sqldlm_wake; nothing deleted: a transactional WAL message (the
//	             commit waits for a synchronous standby)
//	ReleaseHandOver sqldlm_release_next: if nobody waits, sqldlm_release;
//	             otherwise lock the name's row FOR UPDATE first; clear the
//	             inline hold or DELETE the hold [audit] (nothing deleted:
//	             a WAL message); sqldlm_current_epoch: during the
//	             freeze, sqldlm_wake instead of a handover; grant the live
//	             waiter(s) of the current epoch at the head of the queue that no hold conflicts
//	             with (lock lease FOR KEY SHARE and waiter FOR UPDATE, INSERT
//	             hold with the waiter row's payload [audit], UPDATE the
//	             name's row, DELETE waiter) and notify each with the grant,
//	             "g <lease id> <request id> <token> <name>", so it sends no
//	             statement (ConfirmGrant reads the hold such a notification
//	             announces, with a WAL message where a synchronous standby
//	             is configured); nobody granted:
//	             sqldlm_wake
//	ReleaseTx    sqldlm_release, in the caller's tx; at REPEATABLE READ and
//	             SERIALIZABLE, if no hold was deleted: SELECT hold and lease
//	             live through db (live: serialization error)
//	Downgrade    sqldlm_downgrade: move the hold, if inline, to
//	             sqldlm_holders (sqldlm_spill: UPDATE the name's row,
//	             INSERT hold); UPDATE hold WHERE lease live [audit],
//	             sqldlm_wake
//	SetPayload   sqldlm_set_payload: UPDATE the inline hold, or else the
//	             hold, WHERE lease live
//	Fence        through db first, if the hold is inline: sqldlm_spill (a
//	             transaction of its own); then sqldlm_fence, in the caller's tx: SET LOCAL
//	             idle_in_transaction_session_timeout; lock lease, then hold,
//	             FOR KEY SHARE; SELECT lease live. At REPEATABLE READ and
//	             SERIALIZABLE, if sqldlm_fence says no: SELECT hold and
//	             lease live through db (autocommit; held and live: a
//	             serialization error); if yes: SAVEPOINT, SELECT lease FOR
//	             SHARE, ROLLBACK TO and RELEASE the savepoint, in tx
//	Reap         sqldlm_reap: sqldlm_current_epoch (an epoch change, and
//	             its freeze, before anything is deleted); lock up to limit
//	             dead leases FOR UPDATE SKIP
//	             LOCKED, re-check, clear their inline holds (a scan of
//	             sqldlm_locks, rows FOR NO KEY UPDATE SKIP LOCKED: a lease
//	             whose hold was skipped is kept for a later pass), DELETE
//	             their holds [audit], waiters, leases, and the pending
//	             records of leases gone (SKIP LOCKED); lock up to limit idle lock rows FOR UPDATE SKIP
//	             LOCKED, DELETE those still idle; DELETE up to limit audit
//	             rows past the retention (SKIP LOCKED); DELETE the withdrawal
//	             records of the leases it deleted, and up to limit older than
//	             an hour (SKIP LOCKED); sqldlm_wake the names

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sqldlm/sqldlm/dialect"
)

var _ dialect.Locker = postgresDialect{}

func (d postgresDialect) CreateLease(ctx context.Context, db *sql.DB, p *dialect.CreateLeaseParams) error {
	_, err := db.ExecContext(ctx, `INSERT INTO sqldlm_leases (id, owner, ttl_us, created_at, renewed_at, expires_at)
		SELECT $1, $2, $3::bigint, n, n, n + $3::bigint * interval '1 microsecond'
		FROM (SELECT clock_timestamp() AS n) s`,
		p.ID, p.Owner, p.TTL.Microseconds())
	return d.ClassifyError(err)
}

func (d postgresDialect) RenewLease(ctx context.Context, db *sql.DB, leaseID int64) (bool, error) {
	res, err := db.ExecContext(ctx, `UPDATE sqldlm_leases
		SET renewed_at = clock_timestamp(), expires_at = clock_timestamp() + ttl_us * interval '1 microsecond'
		WHERE id = $1 AND broken_at IS NULL AND expires_at > clock_timestamp()
		  AND epoch = (SELECT o_epoch FROM sqldlm_current_epoch())`, leaseID)
	if err != nil {
		return false, d.ClassifyError(err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, d.ClassifyError(err)
	}
	return n > 0, nil
}

func (d postgresDialect) DeleteLease(ctx context.Context, db *sql.DB, leaseID int64) ([]string, error) {
	return d.names(ctx, db, `SELECT sqldlm_delete_lease($1)`, leaseID)
}

// typeMaps holds pgtype maps for scanning arrays: building one registers
// every type pgx knows (hundreds of allocations), so they are reused. A map
// is used by one scan at a time.
var typeMaps = sync.Pool{New: func() any { return pgtype.NewMap() }}

// acquireStatus maps sqldlm_acquire's o_status onto the dialect's outcomes.
var acquireStatus = map[string]dialect.AcquireStatus{
	"granted":          dialect.Granted,
	"blocked":          dialect.Blocked,
	"lease_lost":       dialect.LeaseLost,
	"not_held":         dialect.NotHeld,
	"upgrade_conflict": dialect.UpgradeConflict,
	"withdrawn":        dialect.Withdrawn,
}

func (d postgresDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	rows, err := db.QueryContext(ctx, `SELECT `+acquireColumns+` FROM sqldlm_acquire($1, $2, $3, $4, $5, $6, $7, $8)`,
		p.Name, p.LeaseID, p.RequestID, string(rune(p.Mode)), p.Enqueue, p.UpgradeToken,
		p.Payload, max(p.LockDelay, 0).Microseconds())
	return d.acquireResult(rows, err, "sqldlm_acquire")
}

// AcquireTx runs sqldlm_acquire_tx in tx, which refuses a transaction that
// is not at READ COMMITTED (dialect.ErrIsolation; PostgreSQL then aborts tx)
// and deletes the pending record of a granted request.
func (d postgresDialect) AcquireTx(ctx context.Context, tx *sql.Tx, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	return d.AcquireIn(ctx, dialect.SQLTx(tx), p)
}

// AcquireIn is AcquireTx in a transaction of another driver (pgx).
func (d postgresDialect) AcquireIn(ctx context.Context, tx dialect.Tx, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	if p.Enqueue || p.UpgradeToken != 0 {
		return nil, fmt.Errorf("AcquireTx neither queues nor upgrades (Enqueue %v, UpgradeToken %d)", p.Enqueue, p.UpgradeToken)
	}
	rows, err := tx.Query(ctx, `SELECT `+acquireColumns+` FROM sqldlm_acquire_tx($1, $2, $3, $4, $5, $6)`,
		p.Name, p.LeaseID, p.RequestID, string(rune(p.Mode)), p.Payload, max(p.LockDelay, 0).Microseconds())
	return d.acquireResult(rows, err, "sqldlm_acquire_tx")
}

// acquireColumns are the result columns of sqldlm_acquire and
// sqldlm_acquire_tx, as acquireResult scans them.
const acquireColumns = `o_status, o_token, o_owner, o_mode, o_expires_us, o_ahead,
	o_took_owners, o_took_leases, o_took_tokens, o_took_modes, o_took_expires, o_took_broken, o_took_payloads`

// acquireResult reads the one row of an acquire function (fn, for errors).
func (d postgresDialect) acquireResult(rows dialect.Rows, err error, fn string) (*dialect.AcquireResult, error) {
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, d.ClassifyError(err)
		}
		return nil, fmt.Errorf("%s: no result row", fn)
	}
	var (
		status    string
		token     sql.NullInt64
		owner     sql.NullString
		mode      sql.NullString
		expiresUs sql.NullInt64
		ahead     sql.NullInt64
		took      tookOver
	)
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	err = rows.Scan(&status, &token, &owner, &mode, &expiresUs, &ahead,
		m.SQLScanner(&took.owners), m.SQLScanner(&took.leases), m.SQLScanner(&took.tokens),
		m.SQLScanner(&took.modes), m.SQLScanner(&took.expires), m.SQLScanner(&took.broken),
		m.SQLScanner(&took.payloads))
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	// Close reports an error the server sent after the row, if any.
	if err := rows.Close(); err != nil {
		return nil, d.ClassifyError(err)
	}
	st, ok := acquireStatus[status]
	if !ok {
		return nil, fmt.Errorf("%s: unexpected status %q", fn, status)
	}
	res := &dialect.AcquireResult{Status: st}
	switch st {
	case dialect.Granted:
		if !token.Valid {
			return nil, fmt.Errorf("%s: granted without a token", fn)
		}
		res.Token = token.Int64
		if res.TookOver, err = took.holds(); err != nil {
			return nil, err
		}
	case dialect.Blocked:
		b := &dialect.Blocker{WaitersAhead: int(ahead.Int64)}
		if owner.Valid {
			b.Owner = owner.String
			if mode.Valid && len(mode.String) == 1 {
				b.Mode = dialect.Mode(mode.String[0])
			}
			b.ExpiresIn = time.Duration(expiresUs.Int64) * time.Microsecond
		}
		res.Blocker = b
	}
	return res, nil
}

// tookOver holds sqldlm_acquire's parallel arrays of the holds a grant took
// over (all nil when there were none).
type tookOver struct {
	owners   []string
	leases   []int64
	tokens   []int64
	modes    []string
	expires  []time.Time
	broken   []bool
	payloads []string
}

func (t *tookOver) holds() ([]dialect.TakenHold, error) {
	n := len(t.tokens)
	if len(t.owners) != n || len(t.leases) != n || len(t.modes) != n || len(t.expires) != n || len(t.broken) != n ||
		len(t.payloads) != n {
		return nil, fmt.Errorf("sqldlm_acquire: taken-over hold arrays of unequal lengths")
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]dialect.TakenHold, n)
	for i := range out {
		if len(t.modes[i]) != 1 {
			return nil, fmt.Errorf("sqldlm_acquire: unexpected mode %q of a taken-over hold", t.modes[i])
		}
		out[i] = dialect.TakenHold{Owner: t.owners[i], LeaseID: t.leases[i], Token: t.tokens[i],
			Mode: dialect.Mode(t.modes[i][0]), ExpiredAt: t.expires[i].UTC(), Broken: t.broken[i], Payload: t.payloads[i]}
	}
	return out, nil
}

// CreatePending inserts the record in its own (autocommit) transaction.
func (d postgresDialect) CreatePending(ctx context.Context, db *sql.DB, leaseID, requestID int64) error {
	_, err := db.ExecContext(ctx, `INSERT INTO sqldlm_pending (lease_id, request_id, created_at)
		VALUES ($1, $2, clock_timestamp())`, leaseID, requestID)
	return d.ClassifyError(err)
}

// pendingOutcomes maps sqldlm_pending_outcome's result onto the dialect's.
var pendingOutcomes = map[int32]dialect.TxOutcome{1: dialect.TxOpen, 2: dialect.TxCommitted, 3: dialect.TxNotCommitted}

// PendingOutcome is one call of sqldlm_pending_outcome, in its own
// (autocommit) transaction; it takes no lock it would wait for.
func (d postgresDialect) PendingOutcome(ctx context.Context, db *sql.DB, leaseID, requestID int64) (dialect.TxOutcome, error) {
	var n int32
	if err := db.QueryRowContext(ctx, `SELECT sqldlm_pending_outcome($1, $2)`, leaseID, requestID).Scan(&n); err != nil {
		return 0, d.ClassifyError(err)
	}
	out, ok := pendingOutcomes[n]
	if !ok {
		return 0, fmt.Errorf("sqldlm_pending_outcome: unexpected result %d", n)
	}
	return out, nil
}

// Abandon is one call of sqldlm_abandon, which records the withdrawal under
// the name's row lock, so that no later statement of the request can grant
// or queue it.
func (d postgresDialect) Abandon(ctx context.Context, db *sql.DB, p *dialect.AbandonParams) (*dialect.AbandonResult, error) {
	var (
		freed []string
		kept  sql.NullInt64
	)
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	err := db.QueryRowContext(ctx, `SELECT o_freed, o_kept FROM sqldlm_abandon($1, $2, $3, $4)`,
		p.Name, p.LeaseID, p.RequestID, p.KeepHold).Scan(m.SQLScanner(&freed), &kept)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	return &dialect.AbandonResult{Freed: freed, Kept: kept.Int64}, nil
}

// ConfirmGrant reads the hold a handover notification announces. The
// notification went out at the handover's local commit, which may not have
// reached a synchronous standby yet (its wait cancelled, or still going
// on): where a synchronous standby is configured, the statement also
// writes a transactional WAL message, so that its own commit writes a
// record after the handover's and returns only once the standby has both.
// (A commit that wrote no WAL does not wait for the standby, even with a
// transaction id assigned. Without a synchronous standby no commit waits
// for one, and the message would only cost a WAL flush per handover.)
func (d postgresDialect) ConfirmGrant(ctx context.Context, db *sql.DB, w dialect.Wakeup) (bool, error) {
	var (
		ok  bool
		lsn sql.NullString
	)
	err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM sqldlm_holders
		WHERE lease_id = $1 AND request_id = $2 AND token = $3 AND name = $4),
		CASE WHEN current_setting('synchronous_standby_names') <> ''
		     THEN pg_logical_emit_message(true, 'sqldlm', '')::text END`,
		w.LeaseID, w.RequestID, w.Token, w.Name).Scan(&ok, &lsn)
	return ok, d.ClassifyError(err)
}

func (d postgresDialect) Release(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	var ok bool
	err := db.QueryRowContext(ctx, `SELECT sqldlm_release($1, $2, $3)`, p.Name, p.LeaseID, p.Token).Scan(&ok)
	return ok, d.ClassifyError(err)
}

// ReleaseHandOver runs sqldlm_release_next, which also grants the name to
// the waiter(s) at the head of the queue in the same transaction.
func (d postgresDialect) ReleaseHandOver(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	var ok bool
	err := db.QueryRowContext(ctx, `SELECT sqldlm_release_next($1, $2, $3)`, p.Name, p.LeaseID, p.Token).Scan(&ok)
	return ok, d.ClassifyError(err)
}

// ReleaseTx runs the release function in the caller's transaction: its
// delete and its notification take effect when tx commits. At REPEATABLE
// READ and SERIALIZABLE the delete sees tx's snapshot, which may predate
// the grant: a hold it does not find is looked up in the latest committed
// state through db (see stale).
func (d postgresDialect) ReleaseTx(ctx context.Context, db *sql.DB, tx *sql.Tx, p *dialect.HoldRef) (bool, error) {
	return d.ReleaseIn(ctx, db, dialect.SQLTx(tx), p)
}

// ReleaseIn is ReleaseTx in a transaction of another driver (pgx).
func (d postgresDialect) ReleaseIn(ctx context.Context, db *sql.DB, tx dialect.Tx, p *dialect.HoldRef) (bool, error) {
	var ok, readCommitted bool
	err := tx.QueryRow(ctx, `SELECT sqldlm_release($1, $2, $3), current_setting('transaction_isolation') = 'read committed'`,
		p.Name, p.LeaseID, p.Token).Scan(&ok, &readCommitted)
	if err != nil || ok || readCommitted {
		return ok, d.ClassifyError(err)
	}
	return false, d.stale(ctx, db, p, "ReleaseTx")
}

// stale tells a "not held" answer read in a transaction at REPEATABLE READ
// or SERIALIZABLE apart from a hold that is really gone: it reads, through
// db (autocommit, a snapshot and clock of now), whether the hold exists and
// its lease is live. If so, tx's snapshot is older than the grant or the
// lease's last renewal, and stale returns an error matching
// dialect.ErrSerialization (retry the transaction); otherwise nil.
func (d postgresDialect) stale(ctx context.Context, db *sql.DB, p *dialect.HoldRef, op string) error {
	var held bool
	err := db.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM sqldlm_leases l
		WHERE l.id = $2 AND l.broken_at IS NULL AND l.expires_at > clock_timestamp()
		  AND (EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.token = $1 AND h.lease_id = $2 AND h.name = $3)
		       OR EXISTS (SELECT 1 FROM sqldlm_locks k WHERE k.name = $3 AND k.x_lease = $2 AND k.token = $1)))`,
		p.Token, p.LeaseID, p.Name).Scan(&held)
	if err != nil {
		return fmt.Errorf("%s: the transaction's snapshot does not show the hold; reading the latest state: %w", op, d.ClassifyError(err))
	}
	if held {
		return dialect.NewError(dialect.ErrSerialization, "", fmt.Errorf(
			"%s: the transaction's snapshot predates the grant or the lease's last renewal, and the hold is still held: retry the transaction", op))
	}
	return nil
}

func (d postgresDialect) Downgrade(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	var ok bool
	err := db.QueryRowContext(ctx, `SELECT sqldlm_downgrade($1, $2, $3)`, p.Name, p.LeaseID, p.Token).Scan(&ok)
	return ok, d.ClassifyError(err)
}

func (d postgresDialect) SetPayload(ctx context.Context, db *sql.DB, p *dialect.HoldRef, payload string) (bool, error) {
	var ok bool
	err := db.QueryRowContext(ctx, `SELECT sqldlm_set_payload($1, $2, $3, $4)`, p.Name, p.LeaseID, p.Token, payload).Scan(&ok)
	return ok, d.ClassifyError(err)
}

// Fence moves a hold kept in its name's row to sqldlm_holders (through db,
// committed at once), then locks the hold FOR KEY SHARE in tx: a release deletes the hold's row
// and so waits until tx ends, a takeover (which would delete it too) is
// answered Blocked until then, and renewals of the lease go on. It also sets idle_in_transaction_session_timeout for the rest of tx, so
// that the server ends tx (and its connection) if the holder pauses inside it.
//
// At REPEATABLE READ and SERIALIZABLE, sqldlm_fence reads the hold and the
// lease as of tx's snapshot. A snapshot older than the grant does not show
// the hold, and one older than the lease's last renewal may show it
// expired: when sqldlm_fence says no, Fence reads the latest committed
// state through db and returns an error matching dialect.ErrSerialization
// (retry the transaction) if the hold is held and live there, false
// otherwise. And its FOR KEY SHARE lock does not conflict with, so does
// not detect, a later update of non-key columns: a lease broken after the
// snapshot was taken would pass. So when sqldlm_fence says yes, Fence also
// locks the lease FOR SHARE, which fails with a serialization error (retry
// the transaction) if the row changed since the snapshot, inside a
// savepoint that it rolls back at once: that releases the lock, so
// renewals are not blocked for the rest of tx.
func (d postgresDialect) Fence(ctx context.Context, db *sql.DB, tx *sql.Tx, p *dialect.HoldRef, idleTimeout time.Duration) (bool, error) {
	return d.FenceIn(ctx, db, dialect.SQLTx(tx), p, idleTimeout)
}

// FenceIn is Fence in a transaction of another driver (pgx).
func (d postgresDialect) FenceIn(ctx context.Context, db *sql.DB, tx dialect.Tx, p *dialect.HoldRef, idleTimeout time.Duration) (bool, error) {
	// A hold in its name's row (the fast grant's, schema version 13) moves
	// to sqldlm_holders first, in a transaction of its own, so that tx pins
	// a row of sqldlm_holders as before. The condition is read before any
	// lock: a hold that is not inline (the common case after the first
	// fence) costs a read, and a name's row locked by tx itself (a hold of
	// TryLockTx, not yet committed) is not waited for.
	if _, err := db.ExecContext(ctx, `SELECT sqldlm_spill(k.name, k.x_lease, k.token) FROM sqldlm_locks k
		WHERE k.name = $1 AND k.x_lease = $2 AND k.token = $3`, p.Name, p.LeaseID, p.Token); err != nil {
		return false, d.ClassifyError(err)
	}
	var ok, readCommitted bool
	err := tx.QueryRow(ctx, `SELECT sqldlm_fence($1, $2, $3, $4), current_setting('transaction_isolation') = 'read committed'`,
		p.Name, p.LeaseID, p.Token, idleMillis(idleTimeout)).Scan(&ok, &readCommitted)
	if err != nil || readCommitted {
		return ok, d.ClassifyError(err)
	}
	if !ok {
		return false, d.stale(ctx, db, p, "Fence")
	}
	if err := tx.Exec(ctx, `SAVEPOINT sqldlm_fence`); err != nil {
		return false, d.ClassifyError(err)
	}
	if err := tx.Exec(ctx, `SELECT 1 FROM sqldlm_leases WHERE id = $1 FOR SHARE`, p.LeaseID); err != nil {
		return false, d.ClassifyError(err)
	}
	if err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT sqldlm_fence`); err != nil {
		return false, d.ClassifyError(err)
	}
	if err := tx.Exec(ctx, `RELEASE SAVEPOINT sqldlm_fence`); err != nil {
		return false, d.ClassifyError(err)
	}
	return true, nil
}

// idleMillis rounds d up to whole milliseconds within PostgreSQL's integer
// range; 0 (d not positive) leaves the setting alone.
func idleMillis(d time.Duration) int32 {
	if d <= 0 {
		return 0
	}
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return int32(min(ms, math.MaxInt32))
}

func (d postgresDialect) Reap(ctx context.Context, db *sql.DB, limit int, idleAfter time.Duration) (*dialect.ReapResult, error) {
	var (
		res   dialect.ReapResult
		freed []string
	)
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	err := db.QueryRowContext(ctx, `SELECT o_leases, o_holds, o_waiters, o_idle_locks, o_freed, o_audit_rows
		FROM sqldlm_reap($1, $2)`,
		int32(min(max(limit, 0), math.MaxInt32)), idleAfter.Microseconds(),
	).Scan(&res.Leases, &res.Holds, &res.Waiters, &res.IdleLocks, m.SQLScanner(&freed), &res.AuditRows)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	res.Freed = freed
	return &res, nil
}

// names runs a statement whose one value is a text[] of lock names.
func (d postgresDialect) names(ctx context.Context, db *sql.DB, query string, args ...any) ([]string, error) {
	var names []string
	m := typeMaps.Get().(*pgtype.Map)
	defer typeMaps.Put(m)
	if err := db.QueryRowContext(ctx, query, args...).Scan(m.SQLScanner(&names)); err != nil {
		return nil, d.ClassifyError(err)
	}
	return names, nil
}

// The PostgreSQL dialect also works in a pgx.Tx (package sqldlmpgx).
var _ dialect.ForeignTxLocker = postgresDialect{}
