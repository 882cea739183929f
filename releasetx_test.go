package sqldlm

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// ReleaseTx: the release commits with the caller's transaction; a rollback
// leaves the lock held until Release; Release after a commit is a no-op.
func TestReleaseTx(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, c := b.client(t, Config{}), b.client(t, Config{})

		l, err := a.Lock(ctx, "stack/3", Exclusive)
		require.NoError(t, err)
		tx, err := b.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, l.Fence(ctx, tx))
		require.NoError(t, l.ReleaseTx(ctx, tx))
		require.NoError(t, tx.Rollback())
		_, err = c.TryLock(ctx, "stack/3", Exclusive)
		require.ErrorIs(t, err, ErrLocked, "a rolled-back ReleaseTx leaves the lock held")
		require.NoError(t, l.Err())
		require.NoError(t, l.Release(ctx), "Release after the rollback releases")
		got, err := c.TryLock(ctx, "stack/3", Exclusive)
		require.NoError(t, err)
		require.NoError(t, got.Release(ctx))

		l, err = a.Lock(ctx, "stack/3", Exclusive)
		require.NoError(t, err)
		tx, err = b.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, l.Fence(ctx, tx))
		require.NoError(t, l.ReleaseTx(ctx, tx))
		require.NoError(t, tx.Commit())
		got, err = c.TryLock(ctx, "stack/3", Exclusive)
		require.NoError(t, err, "the commit released the lock")
		require.NoError(t, l.Release(ctx), "Release after the commit is a no-op")
		require.ErrorIs(t, l.Err(), ErrReleased)
		_, err = c.TryLock(ctx, "stack/3", Shared)
		require.ErrorIs(t, err, ErrLocked, "the no-op Release did not touch the new holder")
		require.NoError(t, got.Release(ctx))
	})
}
