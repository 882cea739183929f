package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// injectDialect wraps a real dialect and makes the nth call (counting from
// 1) of one operation fail with a chosen error. With afterReal the real
// call runs first and only its answer is replaced by the error: the
// statement committed, the client does not know it (an unknown outcome).
type injectDialect struct {
	dialect.Dialect
	mu        sync.Mutex
	op        string
	nth       int
	err       error
	afterReal bool
	calls     map[string]int
}

func (d *injectDialect) inject(op string, nth int, err error, afterReal bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.op, d.nth, d.err, d.afterReal, d.calls = op, nth, err, afterReal, map[string]int{}
}

// fail counts a call of op and returns the error to inject (or nil) and
// whether the real call runs first.
func (d *injectDialect) fail(op string) (error, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.calls == nil {
		d.calls = map[string]int{}
	}
	d.calls[op]++
	if op == d.op && d.calls[op] == d.nth {
		return d.err, d.afterReal
	}
	return nil, false
}

func (d *injectDialect) count(op string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[op]
}

func wrapCall[T any](d *injectDialect, op string, real func() (T, error)) (T, error) {
	err, after := d.fail(op)
	if err == nil {
		return real()
	}
	var zero T
	if after {
		if _, realErr := real(); realErr != nil {
			return zero, realErr
		}
	}
	return zero, err
}

func (d *injectDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	op := "acquire"
	if p.UpgradeToken != 0 {
		op = "upgrade"
	}
	return wrapCall(d, op, func() (*dialect.AcquireResult, error) { return d.Dialect.Acquire(ctx, db, p) })
}

func (d *injectDialect) Release(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	return wrapCall(d, "release", func() (bool, error) { return d.Dialect.Release(ctx, db, p) })
}

func (d *injectDialect) Downgrade(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	return wrapCall(d, "downgrade", func() (bool, error) { return d.Dialect.Downgrade(ctx, db, p) })
}

func (d *injectDialect) SetPayload(ctx context.Context, db *sql.DB, p *dialect.HoldRef, payload string) (bool, error) {
	return wrapCall(d, "payload", func() (bool, error) { return d.Dialect.SetPayload(ctx, db, p, payload) })
}

func (d *injectDialect) Fence(ctx context.Context, db *sql.DB, tx *sql.Tx, p *dialect.HoldRef, idle time.Duration) (bool, error) {
	return wrapCall(d, "fence", func() (bool, error) { return d.Dialect.Fence(ctx, db, tx, p, idle) })
}

func (d *injectDialect) CreatePending(ctx context.Context, db *sql.DB, leaseID, requestID int64) error {
	_, err := wrapCall(d, "pending", func() (struct{}, error) {
		return struct{}{}, d.Dialect.CreatePending(ctx, db, leaseID, requestID)
	})
	return err
}

func (d *injectDialect) CreateLease(ctx context.Context, db *sql.DB, p *dialect.CreateLeaseParams) error {
	_, err := wrapCall(d, "lease", func() (struct{}, error) { return struct{}{}, d.Dialect.CreateLease(ctx, db, p) })
	return err
}

var (
	errDeadlock  = &dialect.Error{Kind: dialect.ErrDeadlock, Code: "40P01", Message: "injected: deadlock detected"}
	errSerialize = &dialect.Error{Kind: dialect.ErrSerialization, Code: "40001", Message: "injected: could not serialize"}
	errConnLost  = &dialect.Error{Kind: dialect.ErrConnection, Message: "injected: connection reset by peer"}
	errOther     = errors.New("injected: permission denied for table sqldlm_locks")
)

// Errors that tell the truth: a driver error inside a lock operation is
// retried when that is safe (deadlock, serialization failure, and for an
// acquire a lost connection, whose outcome the retry with the same request
// id settles), and otherwise returned naming the operation and the lock,
// wrapping the driver's error.
func TestOperationErrors(t *testing.T) {
	t.Parallel()
	type step func(ctx context.Context, c *Client, l *Lock) error
	lock := func(ctx context.Context, c *Client, _ *Lock) error {
		l, err := c.Lock(ctx, "node/42", Exclusive)
		if err == nil {
			return l.Release(ctx)
		}
		return err
	}
	tryLock := func(ctx context.Context, c *Client, _ *Lock) error {
		l, err := c.TryLock(ctx, "node/42", Exclusive)
		if err == nil {
			return l.Release(ctx)
		}
		return err
	}
	upgrade := func(ctx context.Context, _ *Client, l *Lock) error { return l.Upgrade(ctx) }
	downgrade := func(ctx context.Context, _ *Client, l *Lock) error {
		if err := l.Upgrade(ctx); err != nil {
			return err
		}
		return l.Downgrade(ctx)
	}
	payload := func(ctx context.Context, _ *Client, l *Lock) error { return l.SetPayload(ctx, "step 2") }
	fence := func(ctx context.Context, c *Client, l *Lock) error {
		tx, err := c.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer tx.Rollback()
		return l.Fence(ctx, tx)
	}
	lockTx := func(ctx context.Context, c *Client, _ *Lock) error {
		tx, err := c.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
		require.NoError(t, err)
		defer tx.Rollback()
		_, err = c.TryLockTx(ctx, tx, "node/42", Exclusive)
		return err
	}
	release := func(ctx context.Context, _ *Client, l *Lock) error { return l.Release(ctx) }
	tests := []struct {
		name    string
		op      string // the dialect call that fails
		err     error
		run     step
		wantOp  string // "" if the error is retried and the step succeeds
		retried bool   // the failed call was made again
	}{
		{"lock deadlock", "acquire", errDeadlock, lock, "", true},
		{"lock serialization", "acquire", errSerialize, lock, "", true},
		{"lock connection lost", "acquire", errConnLost, lock, "", true},
		{"lock other", "acquire", errOther, lock, "lock", false},
		{"lock lease", "lease", errOther, lock, "lock", false},
		{"trylock deadlock", "acquire", errDeadlock, tryLock, "", true},
		{"trylock other", "acquire", errOther, tryLock, "trylock", false},
		{"upgrade deadlock", "upgrade", errDeadlock, upgrade, "", true},
		{"upgrade other", "upgrade", errOther, upgrade, "upgrade", false},
		{"downgrade deadlock", "downgrade", errDeadlock, downgrade, "", true},
		{"downgrade other", "downgrade", errOther, downgrade, "downgrade", false},
		{"payload serialization", "payload", errSerialize, payload, "", true},
		{"payload other", "payload", errOther, payload, "set payload of", false},
		{"fence other", "fence", errOther, fence, "fence", false},
		// A deadlock inside the caller's transaction aborted it: not retried.
		{"fence deadlock", "fence", errDeadlock, fence, "fence", false},
		{"lock in transaction other", "pending", errOther, lockTx, "trylock in transaction", false},
		// A failed release is finished in the background: Release succeeds.
		{"release connection lost", "release", errConnLost, release, "", true},
	}
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx := testCtx(t)
				d := &injectDialect{Dialect: b.db.Dialect}
				c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
				var l *Lock
				if tt.run != nil && tt.op != "acquire" && tt.op != "lease" && tt.op != "pending" {
					var err error
					l, err = c.Lock(ctx, "node/42", Shared)
					require.NoError(t, err)
				}
				d.inject(tt.op, 1, tt.err, false)
				err := tt.run(ctx, c, l)
				if tt.wantOp == "" {
					require.NoError(t, err)
				} else {
					require.Error(t, err)
					require.ErrorIs(t, err, tt.err, "the driver's error is wrapped")
					var oe *OpError
					require.ErrorAs(t, err, &oe)
					require.Equal(t, tt.wantOp, oe.Op)
					require.Equal(t, "node/42", oe.Name)
					require.Contains(t, err.Error(), `sqldlm: `+tt.wantOp+` "node/42": `)
				}
				if tt.retried {
					require.Eventually(t, func() bool { return d.count(tt.op) >= 2 }, 10*time.Second, 5*time.Millisecond,
						"the failed call was retried")
				} else {
					require.Equal(t, 1, d.count(tt.op), "not retried")
				}
				if l != nil {
					_ = l.Release(ctx)
				}
				// Whatever happened, nothing is left held: another client gets the name.
				other := b.client(t, Config{ReapInterval: ReapDisabled})
				require.Eventually(t, func() bool {
					o, err := other.TryLock(ctx, "node/42", Exclusive)
					if err != nil {
						return false
					}
					require.NoError(t, o.Release(ctx))
					return true
				}, 10*time.Second, 20*time.Millisecond, "the name is free")
			})
		}
	})
}

// Sentinel outcomes name the operation and lock too, and still match.
func TestOperationErrorsSentinels(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		c := b.client(t, Config{})
		l, err := c.Lock(ctx, "node/7", Shared)
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx))
		for op, err := range map[string]error{
			"upgrade":        l.Upgrade(ctx),
			"downgrade":      l.Downgrade(ctx),
			"set payload of": l.SetPayload(ctx, "x"),
		} {
			require.ErrorIs(t, err, ErrReleased)
			require.EqualError(t, err, `sqldlm: `+op+` "node/7": lock released`)
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		_, err = c.Lock(cancelled, "node/7", Exclusive)
		require.ErrorIs(t, err, context.Canceled)
		require.EqualError(t, err, `sqldlm: lock "node/7": context canceled`)
		_, err = c.Lock(ctx, "", Exclusive)
		require.ErrorIs(t, err, ErrInvalidName)
		require.NoError(t, c.Close())
		_, err = c.TryLock(ctx, "node/7", Exclusive)
		require.ErrorIs(t, err, ErrClosed)
		require.EqualError(t, err, `sqldlm: trylock "node/7": client closed`)
	})
}

// S10 (indeterminate grant commit), at the client's boundary: the grant
// commits but its answer is lost. Lock's retry with the same request id
// returns that very grant (one token, one hold); TryLock likewise. If the
// caller's context ends right then, the grant is withdrawn: nobody holds
// the name afterwards, and the lease does not renew an orphan hold.
func TestIndeterminateGrant(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		for _, wait := range []bool{true, false} {
			ctx := testCtx(t)
			d := &injectDialect{Dialect: b.db.Dialect}
			c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
			d.inject("acquire", 1, errConnLost, true)
			var l *Lock
			var err error
			if wait {
				l, err = c.Lock(ctx, "node/10", Exclusive)
			} else {
				l, err = c.TryLock(ctx, "node/10", Exclusive)
			}
			require.NoError(t, err, "the retry finds the grant the lost answer carried")
			require.Equal(t, 2, d.count("acquire"))
			require.Equal(t, 1, b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)+` WHERE name = 'node/10'`), "one hold")
			require.Equal(t, l.Token(), lockToken(t, b, "node/10"), "the handle has the grant's token")
			require.Equal(t, 1, b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)+` h JOIN sqldlm_locks k ON k.name = h.name AND k.token = h.token`),
				"the hold is the name's latest grant")
			require.NoError(t, l.Release(ctx))
			require.Zero(t, b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)+` WHERE name = 'node/10'`))
		}

		// The context ends as the answer is lost: the committed grant is withdrawn.
		ctx := testCtx(t)
		cctx, cancel := context.WithCancel(ctx)
		d := &cancelDialect{injectDialect: injectDialect{Dialect: b.db.Dialect}, cancel: cancel}
		c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled})
		_, err := c.Lock(cctx, "node/11", Exclusive)
		require.ErrorIs(t, err, context.Canceled)
		require.Eventually(t, func() bool {
			return b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)+` WHERE name = 'node/11'`) == 0
		}, 5*time.Second, 10*time.Millisecond, "no orphan hold kept alive by the live lease")
		o, err := b.client(t, Config{}).TryLock(ctx, "node/11", Exclusive)
		require.NoError(t, err)
		require.NoError(t, o.Release(ctx))
	})
}

// cancelDialect commits the first acquire, then cancels the caller's
// context and reports the connection lost.
type cancelDialect struct {
	injectDialect
	cancel context.CancelFunc
	once   sync.Once
}

func (d *cancelDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	first := false
	d.once.Do(func() { first = true })
	res, err := d.Dialect.Acquire(ctx, db, p)
	if !first || err != nil || res.Status != dialect.Granted {
		return res, err
	}
	d.cancel()
	return nil, dialect.NewError(dialect.ErrConnection, "", context.Canceled)
}

func lockToken(t *testing.T, b *lockBundle, name string) int64 {
	t.Helper()
	var n int64
	q := `SELECT token FROM sqldlm_locks WHERE name = ?`
	if b.kind == "postgres" {
		q = `SELECT token FROM sqldlm_locks WHERE name = $1`
	}
	require.NoError(t, b.db.QueryRowContext(context.Background(), q, name).Scan(&n))
	return n
}
