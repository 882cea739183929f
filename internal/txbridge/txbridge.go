// Package txbridge lets package sqldlmpgx reach the operations of package
// sqldlm that run in another driver's transaction (a dialect.Tx), without
// making them sqldlm's public API: sqldlm sets these functions when it is
// initialised, and sqldlmpgx, which imports sqldlm, calls them. The
// arguments typed any are sqldlm's *Lock, *Client, Mode and LockOption.
package txbridge

import (
	"context"

	"github.com/sqldlm/sqldlm/dialect"
)

var (
	// Fence is (*sqldlm.Lock).Fence in tx.
	Fence func(ctx context.Context, lock any, tx dialect.Tx) error
	// ReleaseTx is (*sqldlm.Lock).ReleaseTx in tx.
	ReleaseTx func(ctx context.Context, lock any, tx dialect.Tx) error
	// TryLockTx is (*sqldlm.Client).TryLockTx in tx; it returns a
	// *sqldlm.Lock.
	TryLockTx func(ctx context.Context, client any, tx dialect.Tx, name string, mode any, opts []any) (any, error)
)
