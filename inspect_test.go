package sqldlm

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Locks and Leases show holders and waiters with their owners and ages
// measured by the database clock.
func TestLocksAndLeases(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a := b.client(t, Config{Owner: "engine-1"})
		w := b.client(t, Config{Owner: "engine-2"})
		held, err := a.Lock(ctx, "stack/7", Exclusive)
		require.NoError(t, err)
		_, err = a.Lock(ctx, "stack/8", Shared)
		require.NoError(t, err)
		waitCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		waiting := make(chan struct{})
		go func() {
			defer close(waiting)
			_, _ = w.Lock(waitCtx, "stack/7", Shared)
		}()

		var locks []LockInfo
		require.Eventually(t, func() bool {
			locks, err = w.Locks(ctx, Filter{Prefix: "stack/"})
			return err == nil && len(locks) == 2 && len(locks[0].Waiters) == 1
		}, 10*time.Second, 10*time.Millisecond)
		s7 := locks[0]
		require.Equal(t, "stack/7", s7.Name)
		require.Equal(t, Exclusive, s7.Mode)
		require.Equal(t, held.Token(), s7.Token)
		require.Len(t, s7.Holders, 1)
		require.Equal(t, "engine-1", s7.Holders[0].Owner)
		require.Equal(t, held.Token(), s7.Holders[0].Token)
		require.True(t, s7.Holders[0].Live)
		require.Greater(t, s7.Holders[0].ExpiresIn, time.Duration(0))
		require.LessOrEqual(t, s7.Holders[0].ExpiresIn, a.TTL())
		require.Equal(t, "engine-2", s7.Waiters[0].Owner)
		require.Equal(t, Shared, s7.Waiters[0].Mode)
		require.Equal(t, 1, s7.Waiters[0].Position)
		require.Equal(t, Shared, locks[1].Mode)

		only, err := w.Locks(ctx, Filter{Owner: "engine-2"})
		require.NoError(t, err)
		require.Len(t, only, 1, "engine-2 waits for stack/7 only")

		leases, err := a.Leases(ctx)
		require.NoError(t, err)
		byOwner := map[string]LeaseInfo{}
		for _, l := range leases {
			byOwner[l.Owner] = l
		}
		require.Equal(t, 2, byOwner["engine-1"].Holds)
		require.Equal(t, 1, byOwner["engine-2"].Waits)
		require.True(t, byOwner["engine-1"].Live)
		cancel()
		<-waiting
		require.NoError(t, a.Close())
		_, err = a.Locks(ctx, Filter{})
		require.ErrorIs(t, err, ErrClosed)
	})
}
