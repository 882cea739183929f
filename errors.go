package sqldlm

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrLocked is returned by [Client.TryLock] when the lock conflicts with
	// a current holder or an earlier waiter. The error is a *LockedError
	// that says who holds it. A [Client.Lock] whose ctx ends while the name
	// is held returns a *WaitError, which matches both ctx's error and
	// ErrLocked: test ctx's error first to tell a give-up from a refusal.
	ErrLocked = errors.New("sqldlm: locked")

	// ErrLost means the lock is no longer held although it was not released:
	// the client's lease expired (renewals failed for longer than its TTL),
	// or an operator broke it, or another client took it over. Work done
	// under the lock since it was lost may have overlapped another holder's;
	// [Lock.Fence] refuses it. Returned by [Lock.Err] after [Lock.Done] closed,
	// by [Lock.Release], [Lock.Fence], [Lock.Upgrade] and [Client.Do].
	ErrLost = errors.New("sqldlm: lock lost")

	// ErrReleased is returned by [Lock.Err], [Lock.Fence], [Lock.Upgrade] and
	// [Lock.Downgrade] after the lock was released.
	ErrReleased = errors.New("sqldlm: lock released")

	// ErrUpgradeConflict is returned by [Lock.Upgrade] when another holder of
	// the name is already upgrading: of two shared holders upgrading at
	// once, one waits and the other fails at once with this error (it should
	// release its shared lock, or the first waits forever).
	ErrUpgradeConflict = errors.New("sqldlm: another holder is upgrading")

	// ErrClosed is returned by every method of a [Client] after
	// [Client.Close], and by its blocked Lock calls when it closes.
	ErrClosed = errors.New("sqldlm: client closed")

	// ErrSchema is returned by [New] when sqldlm's tables are missing from
	// the database or are at a schema version this build does not use. The
	// message says which, and how to migrate.
	ErrSchema = errors.New("sqldlm: schema not usable")

	// ErrInvalidName is returned for a lock name that is empty, longer than
	// 255 bytes, not valid UTF-8 or contains a NUL byte.
	ErrInvalidName = errors.New("sqldlm: invalid lock name")

	// ErrNotCommitted is returned by [Lock.Err] (and Done is closed) when
	// the transaction a lock was acquired in with [Client.TryLockTx] ended
	// without committing: the lock never existed outside it.
	ErrNotCommitted = errors.New("sqldlm: the transaction that acquired the lock did not commit")

	// ErrTxOpen is returned by methods of a lock acquired with
	// [Client.TryLockTx] that need the lock to exist outside the acquiring
	// transaction (Upgrade, Downgrade, SetPayload, and Fence or ReleaseTx in
	// another transaction) while that transaction is still open.
	ErrTxOpen = errors.New("sqldlm: the transaction that acquired the lock is still open: commit it first")

	// ErrInvalidPayload is returned for a payload longer than 1024 bytes,
	// not valid UTF-8 or containing a NUL byte.
	ErrInvalidPayload = errors.New("sqldlm: invalid payload")

	// ErrLimitMismatch is returned by [Semaphore.Acquire] and
	// [Semaphore.TryAcquire] when permits of the semaphore are held with
	// another limit: every client must use the same limit for a name. The
	// new limit is accepted once no permit of the old one is held by a live
	// lease.
	ErrLimitMismatch = errors.New("sqldlm: semaphore limit differs from the limit in force")

	// ErrInvalidOwner is returned by [New] for a Config.Owner longer than
	// 255 bytes, not valid UTF-8 or containing a NUL byte.
	ErrInvalidOwner = errors.New("sqldlm: invalid owner")
)

// LockedError is the error of a [Client.TryLock] that could not be granted.
// It wraps ErrLocked.
type LockedError struct {
	Name string
	// Owner and Mode describe the conflicting holder (the one whose lease
	// runs longest). Owner is empty when only earlier waiters are in the way.
	Owner string
	Mode  Mode
	// ExpiresIn is how long, by the database's clock at the time of the
	// attempt, until the holder's lease expires unless it is renewed.
	ExpiresIn time.Duration
	// WaitersAhead counts the waiters that would be served first.
	WaitersAhead int
}

func (e *LockedError) Error() string {
	if e.Owner == "" {
		return fmt.Sprintf("sqldlm: %q is locked: %d waiter(s) queued first", e.Name, e.WaitersAhead)
	}
	return fmt.Sprintf("sqldlm: %q is locked: held %s by %q (lease expires in %s unless renewed; %d waiter(s) queued)",
		e.Name, e.Mode, e.Owner, e.ExpiresIn.Round(time.Millisecond), e.WaitersAhead)
}

// Unwrap returns ErrLocked.
func (e *LockedError) Unwrap() error { return ErrLocked }

// WaitError is the error of a [Client.Lock] (or [Lock.Upgrade]) whose ctx
// ended while the name was still held by another client: it says who held
// it at the last attempt. It matches ctx's error (context.DeadlineExceeded
// or context.Canceled) and, through Blocker, ErrLocked and *LockedError.
type WaitError struct {
	Err     error        // ctx's error
	Blocker *LockedError // what the last attempt found in the way
}

func (e *WaitError) Error() string {
	b := e.Blocker
	if b.Owner == "" {
		return fmt.Sprintf("%v while waiting for %q: %d waiter(s) queued first", e.Err, b.Name, b.WaitersAhead)
	}
	return fmt.Sprintf("%v while waiting for %q: held %s by %q (lease expires in %s unless renewed; %d waiter(s) queued)",
		e.Err, b.Name, b.Mode, b.Owner, b.ExpiresIn.Round(time.Millisecond), b.WaitersAhead)
}

// Unwrap returns ctx's error and the Blocker.
func (e *WaitError) Unwrap() []error { return []error{e.Err, e.Blocker} }

// OpError is the error of a lock operation that did not succeed: it names
// the operation ("lock", "trylock", "upgrade", ...) and the lock, and wraps
// the cause. Match the cause with errors.Is (ErrLost, ErrClosed,
// context.DeadlineExceeded, ...) or errors.As (a *dialect.Error carries the
// driver's code). A *LockedError is returned as it is: it names the lock.
type OpError struct {
	Op   string
	Name string
	Err  error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("sqldlm: %s %q: %s", e.Op, e.Name, strings.TrimPrefix(e.Err.Error(), "sqldlm: "))
}

// Unwrap returns the cause.
func (e *OpError) Unwrap() error { return e.Err }

// opError wraps err (if not nil) in an *OpError naming op and name, unless
// it already names the lock.
func opError(op, name string, err error) error {
	if err == nil {
		return nil
	}
	var oe *OpError
	if errors.As(err, &oe) && oe.Name == name {
		return err
	}
	var we *WaitError
	var le *LockedError
	if !errors.As(err, &we) && errors.As(err, &le) {
		return err
	}
	return &OpError{Op: op, Name: name, Err: err}
}
