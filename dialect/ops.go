package dialect

import (
	"context"
	"database/sql"
	"time"
)

// Mode is the mode of a hold as stored in the database.
type Mode byte

// Modes.
const (
	Shared    Mode = 'S'
	Exclusive Mode = 'X'
)

// Conflicts reports whether a hold of mode m and one of mode o exclude each
// other: only two shared holds are compatible.
func (m Mode) Conflicts(o Mode) bool { return m == Exclusive || o == Exclusive }

// Locker is the storage side of sqldlm's locks. Every method is one
// transaction at READ COMMITTED, one round trip where the dialect allows;
// decisions about expiry use only the server's clock.
//
// The semantics, which every dialect must implement exactly and which
// dialecttest checks:
//
//   - A lease is live while broken_at is NULL and expires_at is later than
//     the server's clock. Renewing a lease that is not live fails: an
//     expired lease stays expired.
//   - A hold (a holder row) counts only while its lease is live. A grant that
//     finds a conflicting hold of a dead lease takes it over: it marks that
//     lease broken (so no late renewal can revive it) and deletes the lease's
//     holds on the name, in the same transaction as the grant.
//   - Every grant, and every upgrade, inserts a holder row and so draws a
//     new token from a sequence that never goes back: tokens of a name
//     strictly increase, whatever rows are deleted.
//   - Waiters of a name are served in arrival order unless their modes are
//     compatible: a request is granted only if no earlier live waiter
//     conflicts with it. A pending upgrade goes before every waiter and keeps
//     new shared requests out.
//   - A request is identified by (lease, request id). Repeating it after an
//     unknown outcome returns the hold it already obtained, if any.
type Locker interface {
	// CreateLease inserts a live lease expiring TTL after the server's now.
	CreateLease(ctx context.Context, db *sql.DB, p *CreateLeaseParams) error
	// RenewLease extends a live lease to the server's now plus its TTL. It
	// returns false, and changes nothing, if the lease is not live.
	RenewLease(ctx context.Context, db *sql.DB, leaseID int64) (bool, error)
	// DeleteLease deletes a lease with all its holds and waiters, and returns
	// the names whose holds it deleted (to wake their waiters).
	DeleteLease(ctx context.Context, db *sql.DB, leaseID int64) ([]string, error)

	// Acquire tries to grant a hold, or to upgrade one (p.UpgradeToken).
	Acquire(ctx context.Context, db *sql.DB, p *AcquireParams) (*AcquireResult, error)
	// AcquireTx is Acquire inside the caller's transaction tx, for a
	// request that [Locker.CreatePending] has recorded. p.Enqueue must be
	// false and p.UpgradeToken 0. The grant (with any takeover, and its
	// audit rows) is visible to others only once tx commits, and vanishes if
	// tx rolls back; until tx ends, other grants of the name wait for it
	// (PostgreSQL, MySQL) or every writer does (SQLite). A grant deletes the
	// pending record inside tx, which is how [Locker.PendingOutcome] learns
	// later whether tx committed; any other outcome leaves the record alone.
	// The own lease is not locked in a way that would block its renewal.
	// See [ErrIsolation] for the isolation levels it refuses.
	AcquireTx(ctx context.Context, tx *sql.Tx, p *AcquireParams) (*AcquireResult, error)
	// CreatePending records, in its own transaction, that request
	// (leaseID, requestID) is about to be made with AcquireTx. A dialect
	// that can tell PendingOutcome without a record (SQLite, whose writing
	// transaction holds the only write lock) writes nothing.
	CreatePending(ctx context.Context, db *sql.DB, leaseID, requestID int64) error
	// PendingOutcome tells, without waiting for any lock, what became of a
	// request recorded by CreatePending, once its AcquireTx call has
	// returned: TxOpen while the transaction that granted it has not ended
	// (the record is deleted but locked), TxCommitted once a grant of it
	// has committed (the record is gone), TxNotCommitted if none has and
	// none can any more (the record is there and unlocked: it was never
	// granted, or the transaction rolled back); it then deletes the record.
	// A record whose lease was deleted reads as TxCommitted: the lease is
	// gone and with it every hold.
	PendingOutcome(ctx context.Context, db *sql.DB, leaseID, requestID int64) (TxOutcome, error)

	// Abandon withdraws a request for good. It deletes the request's waiter
	// row and (unless p.KeepHold) any hold it obtained, and records the
	// withdrawal: no statement of that request that runs after Abandon has
	// committed, however late it arrives, can grant it or queue it; Acquire
	// then answers [Withdrawn]. Abandon and the statements of a grant or an
	// enqueue of p.Name serialize (on the name's row), so a statement in
	// flight either committed before Abandon (which then deletes what it
	// did) or sees the withdrawal. The record is deleted with its lease, and
	// by Reap once it is older than [WithdrawnRetention].
	Abandon(ctx context.Context, db *sql.DB, p *AbandonParams) (*AbandonResult, error)
	// Release deletes a hold. It returns false if the hold did not exist.
	Release(ctx context.Context, db *sql.DB, p *HoldRef) (bool, error)
	// ReleaseTx deletes a hold inside the caller's transaction tx, so that
	// the release commits or rolls back with it (waiters are notified at
	// commit where the dialect notifies). It returns false if the hold did
	// not exist.
	//
	// In a transaction whose snapshot is older than the grant or than the
	// lease's last renewal (REPEATABLE READ, SERIALIZABLE), a hold that is
	// held and live by the latest committed state must not be reported
	// gone: the dialect then returns an error matching ErrSerialization
	// (retry the transaction). It may read the latest state through db,
	// outside tx.
	ReleaseTx(ctx context.Context, db *sql.DB, tx *sql.Tx, p *HoldRef) (bool, error)
	// Downgrade turns an exclusive hold of a live lease into a shared one,
	// keeping its token. It returns false if the hold does not exist or its
	// lease is not live.
	Downgrade(ctx context.Context, db *sql.DB, p *HoldRef) (bool, error)
	// SetPayload replaces the payload of a hold of a live lease. It returns
	// false if the hold does not exist or its lease is not live.
	SetPayload(ctx context.Context, db *sql.DB, p *HoldRef, payload string) (bool, error)
	// Fence checks, inside the caller's transaction, that the hold exists
	// and its lease is live by the server's clock, and locks the hold so no
	// takeover or release can commit before tx ends. idleTimeout bounds how
	// long tx may then sit idle before the server ends it, where the dialect
	// can (PostgreSQL, MariaDB).
	//
	// At every isolation level it returns false only when the hold is gone
	// or its lease is not live by the latest committed state: where tx's
	// snapshot is older than that (REPEATABLE READ, SERIALIZABLE) and
	// disagrees, it returns an error matching ErrSerialization (retry the
	// transaction). It must not lock the lease row in tx in a way that
	// blocks the lease's renewals until tx ends. It may read the latest
	// state through db, outside tx, once the hold is locked in tx.
	Fence(ctx context.Context, db *sql.DB, tx *sql.Tx, p *HoldRef, idleTimeout time.Duration) (bool, error)

	// Reap deletes up to limit dead leases with their holds, waiters and
	// pending records, lock rows idle for longer than idleAfter with no
	// holds or waiters, and up to limit audit rows older than the audit
	// retention (whether or not auditing is enabled now).
	Reap(ctx context.Context, db *sql.DB, limit int, idleAfter time.Duration) (*ReapResult, error)
}

// TxOutcome is what [Locker.PendingOutcome] reports.
type TxOutcome int

// Outcomes of a transaction that ran AcquireTx.
const (
	TxOpen TxOutcome = iota + 1
	TxCommitted
	TxNotCommitted
)

// The audit log. When the schema's audit setting is enabled, every Locker
// and Inspector method that changes holds writes one row per hold it
// grants, upgrades, downgrades or deletes into sqldlm_audit, in the same
// transaction as the change and with the server's clock:
//
//   - AuditGrant: a new hold (Acquire, AcquireTx). Owner, LeaseID, Token,
//     Mode and Payload are the new hold's. When the grant took holds of dead
//     leases over, their AuditTakeover rows come first.
//   - AuditUpgrade: the exclusive hold an upgrade created (its new token);
//     Detail is "from token <old token>".
//   - AuditDowngrade: the hold after Downgrade (Mode shared).
//   - AuditRelease: a hold deleted by its own client. Detail is "" for
//     Release and ReleaseTx, "abandoned" for Abandon, "lease closed" for
//     DeleteLease.
//   - AuditTakeover: a hold of a dead lease that a grant deleted. Owner,
//     LeaseID, Token, Mode and Payload are the dead hold's; Detail is
//     "by <new holder's owner>".
//   - AuditExpire: a hold of a dead lease that Reap deleted.
//   - AuditBreak: a hold of a lease an operator broke (Inspector.Break),
//     written when the lease is marked broken (the hold stays until taken
//     over or reaped). Detail is "" for holds of the broken name and
//     "with <name>" for the lease's holds of other names.
type AuditEvent string

// Audit events.
const (
	AuditGrant     AuditEvent = "grant"
	AuditUpgrade   AuditEvent = "upgrade"
	AuditDowngrade AuditEvent = "downgrade"
	AuditRelease   AuditEvent = "release"
	AuditTakeover  AuditEvent = "takeover"
	AuditExpire    AuditEvent = "expire"
	AuditBreak     AuditEvent = "break"
	// Group membership (see Grouper), named MemberAuditName(group, id),
	// with the incarnation as the token, mode X and the meta as payload:
	// a join; a leave; a meta update; and AuditExpire with detail "member"
	// for a member a sweep found dead.
	AuditJoin   AuditEvent = "join"
	AuditLeave  AuditEvent = "leave"
	AuditUpdate AuditEvent = "update"
)

// MemberAuditName is the name under which the audit log records the
// membership of id in group: "sqldlm:group:<group>:<id>".
func MemberAuditName(group, id string) string { return "sqldlm:group:" + group + ":" + id }

// AuditSettings is the schema-wide audit setting (one row of
// sqldlm_settings; the migration creates it disabled, retention 7 days).
type AuditSettings struct {
	Enabled bool
	// Retention: Reap deletes audit rows older than this (at least 1s).
	Retention time.Duration
}

// AuditFilter selects audit rows.
type AuditFilter struct {
	Name  string        // exact name; "" for all
	Since time.Duration // rows written within this long before the server's now; 0 for all
	Limit int           // the newest Limit rows, if > 0
}

// AuditEntry is one audit row.
type AuditEntry struct {
	ID      int64     // increasing in order of writing
	At      time.Time // server clock, UTC
	Event   AuditEvent
	Name    string
	Owner   string
	LeaseID int64
	Token   int64
	Mode    Mode
	Payload string
	Detail  string
}

// Auditor reads and configures the audit log.
type Auditor interface {
	AuditSettings(ctx context.Context, db *sql.DB) (*AuditSettings, error)
	SetAuditSettings(ctx context.Context, db *sql.DB, s *AuditSettings) error
	// AuditLog returns the rows f selects in ID order (oldest first).
	AuditLog(ctx context.Context, db *sql.DB, f *AuditFilter) ([]AuditEntry, error)
}

// TTLAdvisor is implemented by dialects whose server may be a node of a
// cluster that stalls every commit while it detects a failed node (Galera).
type TTLAdvisor interface {
	// AdviseTTL returns a warning, or "" when there is none, if the
	// server's settings can stall commits for long enough that leases of
	// ttl would be lost when a node fails.
	AdviseTTL(ctx context.Context, db *sql.DB, ttl time.Duration) (string, error)
}

// Notifier is implemented by dialects that can wake waiters when a name is
// released (PostgreSQL's LISTEN/NOTIFY). Others are polled.
type Notifier interface {
	// Listen blocks, calling onWake with each wake-up, until ctx ends or the
	// connection fails (it then returns the error). ready is called once
	// listening has started.
	Listen(ctx context.Context, db *sql.DB, ready func(), onWake func(Wakeup)) error
	// ReleaseHandOver is [Locker.Release] that also hands the name over:
	// in the same transaction it grants the waiters at the head of the
	// name's queue that no remaining hold conflicts with (exactly as their
	// own Acquire with Enqueue would, with the payload they queued with),
	// and notifies them with a [Wakeup] that carries the grant's token;
	// their next Acquire also returns that hold (a repeated request). A
	// waiter withdrawn with Abandon loses the hold too.
	ReleaseHandOver(ctx context.Context, db *sql.DB, p *HoldRef) (bool, error)
	// ConfirmGrant reports whether the grant that w announces exists: a
	// hold of w.Name with token w.Token under lease w.LeaseID for request
	// w.RequestID. It is one plain indexed read. Any session can send a
	// notification, so a grant a notification carries is believed only
	// once the database confirms it.
	ConfirmGrant(ctx context.Context, db *sql.DB, w Wakeup) (bool, error)
}

// Wakeup is one notification of a [Notifier]: the request (LeaseID,
// RequestID) waiting for Name may now be granted, because it is at the head
// of the name's queue. A Wakeup with RequestID 0 is for every waiter of Name.
//
// A Wakeup with a Token reports that the request has been granted Name,
// under lease LeaseID, with that fencing token, by a transaction that has
// committed ([Notifier.ReleaseHandOver]): the request needs no further
// statement to learn it.
type Wakeup struct {
	Name      string
	LeaseID   int64
	RequestID int64
	Token     int64
}

// CreateLeaseParams are the arguments of [Locker.CreateLease].
type CreateLeaseParams struct {
	ID    int64 // chosen by the client, random
	Owner string
	TTL   time.Duration
}

// HoldRef names one hold.
type HoldRef struct {
	Name    string
	LeaseID int64
	Token   int64
}

// AcquireParams are the arguments of [Locker.Acquire].
type AcquireParams struct {
	Name      string
	LeaseID   int64
	RequestID int64 // the client's id for this request, random
	Mode      Mode
	// Enqueue records the request as a waiter when it is not granted, so
	// that it keeps its place in the queue on the next attempt.
	Enqueue bool
	// UpgradeToken, when not zero, asks to turn the caller's shared hold with
	// this token into an exclusive hold (Mode must be Exclusive). The new
	// hold keeps the shared hold's payload.
	UpgradeToken int64
	// Payload is stored with the hold (what the holder is doing); at most
	// PayloadMaxBytes of valid UTF-8, validated by the caller.
	Payload string
	// LockDelay: a conflicting hold of a dead lease may be taken over only
	// once the lease has been dead for this long (dead since the earlier of
	// its expires_at and broken_at). Until then the request is Blocked, with
	// Blocker.ExpiresIn the time left. Clean releases are not delayed.
	LockDelay time.Duration
}

// PayloadMaxBytes bounds a hold's payload.
const PayloadMaxBytes = 1024

// AcquireStatus is the outcome of [Locker.Acquire].
type AcquireStatus int

// Outcomes of Acquire.
const (
	// Granted: Token is the new hold's token.
	Granted AcquireStatus = iota + 1
	// Blocked: a live hold or an earlier waiter conflicts (see Blocker).
	Blocked
	// LeaseLost: the requesting lease is not live.
	LeaseLost
	// NotHeld: an upgrade's shared hold does not exist any more.
	NotHeld
	// UpgradeConflict: another holder's upgrade of the name is pending.
	UpgradeConflict
	// Withdrawn: the request was withdrawn with [Locker.Abandon]; it is
	// never granted or queued again.
	Withdrawn
)

// WithdrawnRetention is how long Reap keeps the record of a withdrawn
// request whose lease is still live. Every wait of an acquire statement in
// the server is bounded (about a second per lock wait), so no statement of
// a withdrawn request can still be running after it; a lease that outlives
// a paused server expires, and an expired lease grants nothing.
const WithdrawnRetention = time.Hour

// AbandonParams are the arguments of [Locker.Abandon].
type AbandonParams struct {
	Name      string // the name the request asked for
	LeaseID   int64
	RequestID int64
	// KeepHold withdraws an upgrade: a hold the request obtained replaced
	// the caller's shared hold, so it is kept (and reported in
	// AbandonResult.Kept), not deleted. Its waiter row is deleted and the
	// withdrawal recorded as for any request.
	KeepHold bool
}

// AbandonResult is the outcome of [Locker.Abandon].
type AbandonResult struct {
	// Freed lists the names whose holds Abandon deleted (to wake their
	// waiters).
	Freed []string
	// Kept is the token of the hold the request obtained, when KeepHold is
	// set and the request was granted before the withdrawal; 0 otherwise.
	Kept int64
}

// AcquireResult is the outcome of [Locker.Acquire].
type AcquireResult struct {
	Status AcquireStatus
	Token  int64
	// Blocker is set when Status is Blocked.
	Blocker *Blocker
	// TookOver lists the holds of dead leases that this grant deleted to
	// take the name over, when Status is Granted (empty after a clean
	// release, and on an idempotent repeat of a request).
	TookOver []TakenHold
}

// TakenHold is a hold of a dead lease that a grant took over.
type TakenHold struct {
	Owner   string
	LeaseID int64
	Token   int64
	Mode    Mode
	// ExpiredAt is the dead lease's expires_at (server clock); an operator's
	// break sets it to the time of the break.
	ExpiredAt time.Time
	// Broken reports whether the lease had been broken (by an operator or
	// by an earlier takeover of another name) rather than just expired.
	Broken bool
	// Payload is the dead hold's payload.
	Payload string
}

// Blocker describes what keeps a request waiting.
type Blocker struct {
	// The conflicting hold, when a hold conflicts (Owner is empty when only
	// earlier waiters do).
	Owner string
	Mode  Mode
	// ExpiresIn is how long, by the server's clock, until the conflicting
	// hold's lease expires unless renewed.
	ExpiresIn time.Duration
	// WaitersAhead counts live waiters queued before the request.
	WaitersAhead int
}

// ReapResult reports what [Locker.Reap] deleted.
type ReapResult struct {
	Leases, Holds, Waiters, IdleLocks int
	// AuditRows counts the audit rows deleted after their retention.
	AuditRows int
	// Freed lists the names whose holds were deleted.
	Freed []string
}
