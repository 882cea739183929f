package sqldlm

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/txbridge"
)

// callerTx is the caller's transaction that Fence, ReleaseTx and TryLockTx
// work in: database/sql's, or another driver's adapted to dialect.Tx
// (package sqldlmpgx: pgx.Tx), which only a dialect.ForeignTxLocker takes.
// Two callerTx of one transaction are equal.
type callerTx struct {
	std   *sql.Tx
	other dialect.Tx
}

func stdTx(tx *sql.Tx) callerTx { return callerTx{std: tx} }

// isSet reports whether there is a transaction at all.
func (t callerTx) isSet() bool { return t.std != nil || t.other != nil }

// same reports whether t and u are one transaction. An adapter of another
// driver's transaction may name its transaction by TxKey (sqldlmpgx does:
// a pgx.Tx of a type == cannot compare would make == panic); otherwise the
// adapters are compared, and ones == cannot compare are different.
func (t callerTx) same(u callerTx) (same bool) {
	if t.std != nil || u.std != nil {
		return t.std == u.std && t.other == nil && u.other == nil
	}
	type keyed interface{ TxKey() any }
	if kt, ok := t.other.(keyed); ok {
		if ku, ok := u.other.(keyed); ok {
			return kt.TxKey() == ku.TxKey()
		}
	}
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return t.other == u.other
}

// foreign returns the dialect's ForeignTxLocker, or an error saying that
// the dialect takes only a *sql.Tx.
func (c *Client) foreign() (dialect.ForeignTxLocker, error) {
	f, ok := c.dialect.(dialect.ForeignTxLocker)
	if !ok {
		return nil, fmt.Errorf("the %s dialect works only in a *sql.Tx, not in another driver's transaction", c.dialect.Name())
	}
	return f, nil
}

func (c *Client) acquireIn(ctx context.Context, tx callerTx, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	if tx.std != nil {
		return c.dialect.AcquireTx(ctx, tx.std, p)
	}
	f, err := c.foreign()
	if err != nil {
		return nil, err
	}
	return f.AcquireIn(ctx, tx.other, p)
}

func (c *Client) releaseIn(ctx context.Context, tx callerTx, p *dialect.HoldRef) (bool, error) {
	if tx.std != nil {
		return c.dialect.ReleaseTx(ctx, c.db, tx.std, p)
	}
	f, err := c.foreign()
	if err != nil {
		return false, err
	}
	return f.ReleaseIn(ctx, c.db, tx.other, p)
}

func (c *Client) fenceIn(ctx context.Context, tx callerTx, p *dialect.HoldRef, idleTimeout time.Duration) (bool, error) {
	if tx.std != nil {
		return c.dialect.Fence(ctx, c.db, tx.std, p, idleTimeout)
	}
	f, err := c.foreign()
	if err != nil {
		return false, err
	}
	return f.FenceIn(ctx, c.db, tx.other, p, idleTimeout)
}

// The operations in another driver's transaction, for package sqldlmpgx.
func init() {
	txbridge.Fence = func(ctx context.Context, lock any, tx dialect.Tx) error {
		l := lock.(*Lock)
		if fenceUnchecked() {
			return nil // test builds with the sqldlm_mutant tag only
		}
		return opError("fence", l.name, l.fence(ctx, callerTx{other: tx}))
	}
	txbridge.ReleaseTx = func(ctx context.Context, lock any, tx dialect.Tx) error {
		l := lock.(*Lock)
		return opError("release in transaction", l.name, l.releaseTx(ctx, callerTx{other: tx}))
	}
	txbridge.TryLockTx = func(ctx context.Context, client any, tx dialect.Tx, name string, mode any, opts []any) (any, error) {
		lopts := make([]LockOption, len(opts))
		for i, o := range opts {
			lopts[i] = o.(LockOption)
		}
		l, err := client.(*Client).tryLockIn(ctx, callerTx{other: tx}, name, mode.(Mode), lopts)
		if err != nil {
			return nil, err
		}
		return l, nil
	}
}
