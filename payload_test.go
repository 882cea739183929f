package sqldlm

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A payload is stored with the hold, shown by Locks, replaced while held.
func TestPayload(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		c := b.client(t, Config{})
		l, err := c.Lock(ctx, "volume/42", Exclusive, WithPayload("resize volume-42, step 1"))
		require.NoError(t, err)
		require.Equal(t, "resize volume-42, step 1", l.Payload())
		payloadOf := func() string {
			locks, err := c.Locks(ctx, Filter{Prefix: "volume/42"})
			require.NoError(t, err)
			require.Len(t, locks, 1)
			return locks[0].Holders[0].Payload
		}
		require.Equal(t, "resize volume-42, step 1", payloadOf())
		require.NoError(t, l.SetPayload(ctx, "resize volume-42, step 3"))
		require.Equal(t, "resize volume-42, step 3", payloadOf())
		require.Equal(t, "resize volume-42, step 3", l.Payload())

		for _, bad := range []string{strings.Repeat("x", PayloadMaxBytes+1), "bad\xff", "nul\x00"} {
			require.ErrorIs(t, l.SetPayload(ctx, bad), ErrInvalidPayload)
			_, err := c.TryLock(ctx, "other", Exclusive, WithPayload(bad))
			require.ErrorIs(t, err, ErrInvalidPayload)
		}
		require.Equal(t, "resize volume-42, step 3", payloadOf(), "a refused payload changed nothing")
		require.NoError(t, l.Release(ctx))
		require.ErrorIs(t, l.SetPayload(ctx, "late"), ErrReleased)
	})
}

// Lock-delay: a name whose holder died is granted only once the holder's
// lease has been dead for the delay; a cleanly released one at once.
func TestLockDelay(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		const delay = 2 * time.Second
		dying, f := b.faulty(t, Config{TTL: time.Second, Owner: "dying", ReapInterval: ReapDisabled})
		c := b.client(t, Config{LockDelay: delay, ReapInterval: ReapDisabled})

		clean, err := dying.Lock(ctx, "node/8", Exclusive)
		require.NoError(t, err)
		require.NoError(t, clean.Release(ctx))
		l, err := c.TryLock(ctx, "node/8", Exclusive)
		require.NoError(t, err, "a clean release is not delayed")
		require.NoError(t, l.Release(ctx))

		held, err := dying.Lock(ctx, "node/8", Exclusive)
		require.NoError(t, err)
		f.failRenew.Store(true)
		f.failRelease.Store(true)
		f.failDelete.Store(true) // dies without cleaning up
		<-held.Done()
		// Wait until the database, too, considers the lease dead.
		require.Eventually(t, func() bool {
			leases, err := c.Leases(ctx)
			require.NoError(t, err)
			for _, le := range leases {
				if le.Owner == "dying" && !le.Live {
					return true
				}
			}
			return false
		}, 10*time.Second, 10*time.Millisecond)
		deadAt := time.Now()
		_, err = c.TryLock(ctx, "node/8", Exclusive)
		require.ErrorIs(t, err, ErrLocked, "held back for the lock-delay")
		got, err := c.Lock(ctx, "node/8", Exclusive)
		require.NoError(t, err)
		require.GreaterOrEqual(t, time.Since(deadAt), delay-300*time.Millisecond, "not granted before the delay")
		require.NotNil(t, got.Takeover())
	})
}
