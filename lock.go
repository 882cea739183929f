package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// Lock is a held lock: the handle [Client.Lock] and [Client.TryLock] return.
// A lock is held by its handle, not by the client: two handles of one client
// conflict as handles of two processes do. Its methods are safe for
// concurrent use.
//
// Holding a handle does not prove the lock is still held: the lease behind
// it can be lost (a pause, a network cut). Watch [Lock.Done], and make the
// writes that matter with [Lock.Fence] or pass [Lock.Token] to a resource
// that rejects older tokens.
type Lock struct {
	c     *Client
	lease *lease
	name  string

	mu      sync.Mutex
	mode    Mode
	token   int64
	err     error // nil while held; ErrLost or ErrReleased after
	relErr  error // what Release returns, once it has run
	done    chan struct{}
	dropped bool      // Release has run (or the client closed)
	granted time.Time // when the current grant was made (for hooks)
	taken   *Takeover // the dead holder this grant (or upgrade) took over
	inTx    bool      // ReleaseTx deleted the hold in a transaction that may have committed
	payload string
	// For TryLockTx: the acquiring transaction, until it is known to have
	// ended, and the request's id (its pending record).
	tx    callerTx
	txReq int64
}

// Takeover describes a holder whose lease died (expired, or was broken by
// an operator) while it held the lock, and whom the grant took the lock
// over from: the new holder may have to finish or undo its work.
type Takeover struct {
	Owner   string // the previous holder's owner
	LeaseID int64
	Token   int64 // its fencing token
	Mode    Mode
	// ExpiredAt is when its lease expired by the database's clock (for a
	// broken lease, when it was broken).
	ExpiredAt time.Time
	// Broken reports that its lease was broken (by sqldlm break, or by a
	// takeover of another of its locks) rather than left to expire.
	Broken bool
	// Payload is the dead holder's last payload: what it was doing.
	Payload string
}

// Takeover returns the previous holder this lock was taken over from, or
// nil if the name was free or cleanly released. If several (shared) holders
// were taken over, it is the one with the highest token.
func (l *Lock) Takeover() *Takeover {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.taken == nil {
		return nil
	}
	t := *l.taken
	return &t
}

// latestTakeover picks the taken-over hold with the highest token.
func latestTakeover(taken []dialect.TakenHold) *Takeover {
	var out *Takeover
	for _, t := range taken {
		if out == nil || t.Token > out.Token {
			out = &Takeover{Owner: t.Owner, LeaseID: t.LeaseID, Token: t.Token, Mode: modeOf(t.Mode), ExpiredAt: t.ExpiredAt,
				Broken: t.Broken, Payload: t.Payload}
		}
	}
	return out
}

// Name returns the lock's name.
func (l *Lock) Name() string { return l.name }

// Mode returns the lock's current mode (it changes with Upgrade and Downgrade).
func (l *Lock) Mode() Mode {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mode
}

// Token returns the lock's fencing token: strictly greater than the token of
// every earlier grant of the name, in either mode, across restarts and
// garbage collection. An upgrade gets a new token. Pass it to systems that
// can reject stale writers.
func (l *Lock) Token() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.token
}

// Done returns a channel closed when the lock is released or lost.
func (l *Lock) Done() <-chan struct{} { return l.done }

// Err returns nil while the lock is held, ErrLost once it was lost and
// ErrReleased once it was released. It checks the lease's trust deadline
// itself: right after the process resumes from a pause past the deadline,
// Err reports ErrLost even before the expiry timer has closed Done.
func (l *Lock) Err() error {
	l.mu.Lock()
	err := l.err
	l.mu.Unlock()
	if err == nil && l.lease != nil && l.lease.endIfOverdue() {
		l.mu.Lock()
		err = l.err
		l.mu.Unlock()
	}
	return err
}

// finish ends the lock with err (ErrLost or ErrReleased) once.
func (l *Lock) finish(err error) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return false
	}
	l.err = err
	close(l.done)
	return true
}

// lost ends the lock with ErrLost (the database disowned it) and reports it.
func (l *Lock) lost() {
	if l.finish(ErrLost) {
		l.c.hooks.LockLost(l.name, l.Mode(), time.Since(l.granted))
	}
	l.lease.renewNow()
}

func (l *Lock) ref() *dialect.HoldRef {
	l.mu.Lock()
	defer l.mu.Unlock()
	return &dialect.HoldRef{Name: l.name, LeaseID: l.lease.id, Token: l.token}
}

// Release releases the lock. It is idempotent and returns what it returned
// the first time.
//
// It returns ErrLost if the lock had been lost before Release was called:
// the critical section may not have been exclusive. Otherwise it returns
// nil, even when the database cannot be reached: the lock is then dropped
// locally and released in the background, and the lease's expiry frees it
// at the latest. Release waits for the database at most until ctx ends, and
// never longer than half the TTL or 5 seconds, whichever is shorter, so
// Release(context.Background()) cannot hang on a network that does not
// answer. A lock that Client.Close released returns nil at once.
//
// Commit or roll back a transaction fenced with [Lock.Fence] before
// releasing: the release waits for it.
func (l *Lock) Release(ctx context.Context) error {
	return opError("release", l.name, l.release(ctx))
}

func (l *Lock) release(ctx context.Context) error {
	l.mu.Lock()
	if l.dropped {
		defer l.mu.Unlock()
		return l.relErr
	}
	l.dropped = true
	lostBefore := l.err == ErrLost
	// Only Client.Close ends a handle with ErrReleased before Release has
	// run: deleting the lease released it (or its expiry will).
	closedBefore := l.err == ErrReleased
	l.mu.Unlock()
	c := l.c
	if closedBefore {
		return nil
	}
	// Bound the synchronous attempt: the janitor finishes a release that
	// did not get an answer in time.
	ctx, cancel := context.WithTimeout(ctx, c.cfg.releaseBound())
	defer cancel()
	if lostBefore {
		l.lease.remove(l)
		l.setRelErr(ErrLost)
		l.releaseLost(ctx)
		return ErrLost
	}
	if l.isPending() && l.releasePending(ctx) {
		return nil
	}
	ref := l.ref()
	l.lease.remove(l)
	if l.finish(ErrReleased) {
		c.hooks.Released(l.name, l.Mode(), time.Since(l.granted))
	}
	released, err := c.release(ctx, ref)
	switch {
	case err != nil:
		c.logger.Info("sqldlm: release failed, retrying in the background", "lock_name", l.name, "token", ref.Token, "error", err)
		c.janitor.release(l.lease, ref)
	case !released && l.releasedInTx():
		// ReleaseTx's transaction committed: the lock was released with it.
		c.waiters.wakeHead(l.name)
	case !released && l.lease.closedByClient():
		// Client.Close deleted the lease, and the hold with it, meanwhile.
		return nil
	case !released:
		// The hold was gone: taken over or reaped after the lease died.
		l.setRelErr(ErrLost)
		l.lease.renewNow()
		return ErrLost
	case !c.notified():
		// Nothing notifies the head of the queue: in this process, wake
		// the request that has waited longest rather than let it sleep
		// out its poll interval. (Where the database notifies, the release
		// has handed the name over to the head or woken it, wherever it
		// waits; waking another request here would only cost a statement.)
		c.waiters.wakeHead(l.name)
	}
	return nil
}

// releaseLost deletes, by its token, the hold of a handle that was marked
// lost while its lease still lives: the loss may be an answer the latest
// state contradicts (a snapshot older than the grant), and a hold left on a
// live, renewed lease would keep the name locked for the client's life. The
// delete finds nothing where the hold really was taken over or reaped. It
// is tried for a short time, then by the janitor while the lease lives.
func (l *Lock) releaseLost(ctx context.Context) {
	c := l.c
	if !l.lease.live() {
		return // the lease's deletion covers the hold
	}
	if l.isPending() {
		c.settlePending(l.lease, l.name, l.txReq) // withdraws the request if its transaction committed
		return
	}
	ref := l.ref()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.settleBound())
	released, err := c.release(ctx, ref)
	cancel()
	switch {
	case err != nil:
		c.logger.Info("sqldlm: release of a lost lock failed, retrying in the background", "lock_name", l.name, "token", ref.Token, "error", err)
		c.janitor.release(l.lease, ref)
	case released && !c.notified():
		c.waiters.wakeHead(l.name)
	}
}

// closedByClient reports whether Client.Close ended the lock.
func (l *Lock) closedByClient() bool {
	l.mu.Lock()
	released := l.err == ErrReleased
	l.mu.Unlock()
	return released && l.lease.closedByClient()
}

// release deletes a hold; where the dialect can, it hands the name over to
// the waiters at the head of its queue in the same transaction.
func (c *Client) release(ctx context.Context, ref *dialect.HoldRef) (bool, error) {
	if n, ok := c.dialect.(dialect.Notifier); ok {
		return n.ReleaseHandOver(ctx, c.db, ref)
	}
	return c.dialect.Release(ctx, c.db, ref)
}

func (l *Lock) releasedInTx() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inTx
}

// Payload returns the lock's payload (see WithPayload).
func (l *Lock) Payload() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.payload
}

// SetPayload replaces the lock's payload while it is held: what the holder
// is doing now. It returns ErrLost if the lock was lost, ErrInvalidPayload
// for a bad payload.
func (l *Lock) SetPayload(ctx context.Context, p string) error {
	return opError("set payload of", l.name, l.setPayload(ctx, p))
}

func (l *Lock) setPayload(ctx context.Context, p string) error {
	if err := ValidatePayload(p); err != nil {
		return err
	}
	if err := l.settled(ctx); err != nil {
		return err
	}
	ok, err := retryStatement(ctx, func() (bool, error) { return l.c.dialect.SetPayload(ctx, l.c.db, l.ref(), p) })
	if err != nil {
		return err
	}
	if !ok {
		l.lost()
		return ErrLost
	}
	l.mu.Lock()
	l.payload = p
	l.mu.Unlock()
	return nil
}

// ReleaseTx releases the lock inside the caller's own transaction tx: the
// release commits with tx's writes, or not at all. Write the final state and
// release in one transaction, and keep `defer l.Release(ctx)`: after tx
// commits, Release only drops the handle (and returns nil); after tx rolls
// back, Release releases the lock as usual. Until then the handle stays
// held and its lease renewed.
//
// It returns ErrLost (or ErrReleased) if the lock is no longer held: roll
// tx back.
func (l *Lock) ReleaseTx(ctx context.Context, tx *sql.Tx) error {
	return opError("release in transaction", l.name, l.releaseTx(ctx, stdTx(tx)))
}

func (l *Lock) releaseTx(ctx context.Context, tx callerTx) error {
	if !tx.isSet() {
		return errors.New("ReleaseTx needs the transaction the release is to commit with, got a nil *sql.Tx")
	}
	if err := l.settledOrIn(ctx, tx); err != nil {
		return err
	}
	ok, err := l.c.releaseIn(ctx, tx, l.ref())
	if err != nil {
		return err
	}
	if !ok {
		l.lost()
		return ErrLost
	}
	l.mu.Lock()
	l.inTx = true
	l.mu.Unlock()
	return nil
}

func (l *Lock) setRelErr(err error) {
	l.mu.Lock()
	l.relErr = err
	l.mu.Unlock()
}

// Upgrade turns a shared lock into an exclusive one, waiting until the
// caller is the only holder or ctx ends; the lock then has a new, greater
// token. A pending upgrade goes before every waiter. If another holder is
// already upgrading, Upgrade fails at once with ErrUpgradeConflict (instead
// of the two waiting for each other forever). If ctx ends first, the lock
// stays shared, except that if the upgrade was granted as ctx ended,
// Upgrade returns nil (the lock is then exclusive). If the database cannot
// tell which (the request's withdrawal fails too), the lock is given up:
// Upgrade returns an error matching ErrLost, and the lock is released in
// the background. Upgrading an exclusive lock does nothing.
//
// Commit or roll back a transaction in which this lock's Fence succeeded
// before calling Upgrade: until that transaction ends it pins the shared
// hold, which the upgrade must replace, so the upgrade waits for it (on
// PostgreSQL while holding up every other request for the name) until ctx
// ends or the server ends the idle transaction after the TTL. Upgrade
// cannot detect this: the handle does not know the caller's transactions.
func (l *Lock) Upgrade(ctx context.Context) error {
	return opError("upgrade", l.name, l.upgrade(ctx))
}

func (l *Lock) upgrade(ctx context.Context) error {
	if err := l.settled(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	err, mode, token := l.err, l.mode, l.token
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if mode == Exclusive {
		return nil
	}
	r := request{c: l.c, name: l.name, mode: Exclusive, id: rand.Int64(), wait: true, upgradeToken: token, lease: l.lease}
	newToken, _, taken, err := r.run(ctx)
	if err != nil && r.giveUp {
		newToken, err = l.withdrawUpgrade(r.id, token, err)
	}
	if errors.Is(err, ErrLost) {
		l.lost()
	}
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err // lost while the upgrade was granted; the lease's end releases it
	}
	l.mode, l.token = Exclusive, newToken
	if t := latestTakeover(taken); t != nil {
		l.taken = t
	}
	l.c.reportTakeover(l.name, Exclusive, newToken, taken)
	return nil
}

// withdrawUpgrade withdraws upgrade request id, which gave up with cause
// (its context ended, or it failed) and may have been granted meanwhile
// (an answer lost after the commit, a statement that ran on in the server,
// a handover). The withdrawal keeps the hold the request obtained, since
// that hold replaced the lock's shared one, and reports its token: the lock
// then adopts it (Upgrade succeeded after all). Otherwise the shared hold
// is untouched and cause is returned. If the withdrawal fails, the outcome
// stays unknown: the lock is ended with ErrLost first (the holder knows
// before anyone can be granted the name), then the janitor withdraws the
// request, deleting whatever it obtained, and releases the shared hold.
func (l *Lock) withdrawUpgrade(id, sharedToken int64, cause error) (int64, error) {
	c := l.c
	if !l.lease.live() {
		return 0, cause // the lease's end lost (or released) the lock and covers the request
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.settleBound())
	res, err := c.dialect.Abandon(ctx, c.db, &dialect.AbandonParams{Name: l.name, LeaseID: l.lease.id, RequestID: id, KeepHold: true})
	cancel()
	if err != nil {
		l.lost()
		c.janitor.abandonUpgrade(l.lease, l.name, id, sharedToken)
		c.logger.Info("sqldlm: an upgrade's outcome is unknown and withdrawing it failed; the lock is given up",
			"lock_name", l.name, "cause", cause, "error", err)
		return 0, fmt.Errorf("%w; withdrawing the upgrade failed (%v), so whether it was granted is unknown and the lock was given up: %w",
			cause, err, ErrLost)
	}
	if res.Kept != 0 {
		c.logger.Debug("sqldlm: an upgrade given up had been granted; keeping it", "lock_name", l.name, "token", res.Kept)
		return res.Kept, nil
	}
	return 0, cause
}

// Downgrade turns an exclusive lock into a shared one, keeping its token,
// and lets waiting shared requests in. It never waits for other holders.
// Downgrading a shared lock does nothing.
//
// If its answer is lost (a connection failure, or ctx ending while the
// statement runs), Downgrade sends it again under a short context of its
// own, so the handle's mode is always the database's: it returns nil once
// the lock is shared. If the database cannot be reached to tell, the lock
// is given up: Downgrade returns an error matching ErrLost and the hold is
// released in the background.
func (l *Lock) Downgrade(ctx context.Context) error {
	return opError("downgrade", l.name, l.downgrade(ctx))
}

func (l *Lock) downgrade(ctx context.Context) error {
	if err := l.settled(ctx); err != nil {
		return err
	}
	l.mu.Lock()
	err, mode := l.err, l.mode
	l.mu.Unlock()
	if err != nil {
		return err
	}
	if mode == Shared {
		return nil
	}
	ok, unknown, err := l.downgradeStatement(ctx)
	if err != nil && unknown {
		// The downgrade may have committed, and ctx is over (or the lock
		// ended). Settle it: the UPDATE is idempotent, so send it again
		// under a short context of its own. The handle's mode must be the
		// hold's: exclusive over a shared hold would let Fence pass while
		// other shared holders exist, and shared over an exclusive hold
		// would misreport the lock.
		sctx, cancel := context.WithTimeout(context.Background(), l.c.cfg.settleBound())
		var settleErr error
		ok, _, settleErr = l.downgradeStatement(sctx)
		cancel()
		if settleErr != nil {
			// Still unknown: give the lock up (the holder knows first),
			// then release its hold in the background.
			l.lost()
			l.c.logger.Info("sqldlm: a downgrade's outcome is unknown and settling it failed; the lock is given up",
				"lock_name", l.name, "error", settleErr)
			l.c.janitor.release(l.lease, l.ref())
			return fmt.Errorf("%w; whether the downgrade committed is unknown (%v), so the lock was given up: %w", err, settleErr, ErrLost)
		}
		err = nil
	}
	if err != nil {
		return err
	}
	if !ok {
		l.lost()
		return ErrLost
	}
	l.mu.Lock()
	l.mode = Shared
	l.mu.Unlock()
	l.c.waiters.wake(l.name)
	return nil
}

// downgradeStatement runs the downgrade, retrying it while ctx allows and
// the lock is held when the connection failed (its outcome is unknown; the
// statement is idempotent) or on a deadlock, serialization failure or lock
// timeout. unknown reports that the error it returns follows a statement
// whose outcome is unknown.
func (l *Lock) downgradeStatement(ctx context.Context) (ok, unknown bool, err error) {
	wait := newExpBackoff(5*time.Millisecond, time.Second)
	for {
		ok, err = l.c.dialect.Downgrade(ctx, l.c.db, l.ref())
		if err == nil {
			return ok, false, nil
		}
		cut := errors.Is(err, dialect.ErrConnection) || ctx.Err() != nil
		unknown = unknown || cut
		if !cut && !dialect.IsRetryable(err) || ctx.Err() != nil {
			return false, unknown, err
		}
		if !sleepUntil(jitter(wait.next()), ctx.Done(), l.done) {
			return false, unknown, err
		}
	}
}

// Fence proves, inside the caller's own transaction tx, that the lock is
// still held with its token and that its lease is live by the database's
// clock; it returns ErrLost (or ErrReleased) otherwise. Once Fence returns
// nil, no other client can be granted the lock, and the lock cannot be
// released, until tx commits or rolls back: writes in tx after Fence are
// made under the lock or not at all. Call it right before the writes that
// matter, and treat ErrLost as "roll back, and do not retry under this
// lock".
//
// On PostgreSQL and MariaDB, tx is ended by the server if it then sits idle
// for longer than the TTL, so that a paused holder cannot block a takeover
// forever. PostgreSQL sets idle_in_transaction_session_timeout for tx only;
// MariaDB's idle_transaction_timeout (MySQL: wait_timeout) is a session
// setting and stays on tx's pooled connection after tx ends, so a later
// transaction on that connection that sits idle longer than the TTL is
// ended too (MySQL closes the idle connection): run fenced transactions on
// a pool of their own if that matters.
//
// At REPEATABLE READ or SERIALIZABLE, Fence fails with a serialization
// error (never ErrLost) when tx's snapshot is older than the latest state
// and disagrees with it: retry the whole transaction. On MySQL/MariaDB,
// Fence reads the lease's state on a second connection of the Client's
// *sql.DB, at every isolation level; that pool needs a connection free
// besides tx's.
//
// Until tx ends, the hold cannot change either: end tx before calling
// [Lock.Upgrade] or [Lock.Release] on this lock, which otherwise wait for it
// (an Upgrade until its ctx ends; a Release for its bound, and then
// finishes in the background).
func (l *Lock) Fence(ctx context.Context, tx *sql.Tx) error {
	if fenceUnchecked() {
		return nil // test builds with the sqldlm_mutant tag only
	}
	return opError("fence", l.name, l.fence(ctx, stdTx(tx)))
}

func (l *Lock) fence(ctx context.Context, tx callerTx) error {
	if !tx.isSet() {
		return errors.New("Fence needs the transaction whose writes it fences, got a nil *sql.Tx")
	}
	if err := l.settledOrIn(ctx, tx); err != nil {
		return err
	}
	ok, err := l.c.fenceIn(ctx, tx, l.ref(), l.c.cfg.TTL)
	if err != nil {
		return err
	}
	if !ok {
		l.lost()
		return ErrLost
	}
	return nil
}
