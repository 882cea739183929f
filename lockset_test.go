package sqldlm

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/stretchr/testify/require"
)

// Two LockAll calls over overlapping sets in opposite orders, from many
// goroutines of several clients, never deadlock and never break mutual
// exclusion.
func TestLockAllNoDeadlock(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		sets := [][]Request{
			{{Name: "volume/1", Mode: Exclusive}, {Name: "snapshot/1", Mode: Exclusive}, {Name: "node/1", Mode: Shared}},
			{{Name: "node/1", Mode: Exclusive}, {Name: "snapshot/1", Mode: Exclusive}, {Name: "volume/1", Mode: Exclusive}},
			{{Name: "snapshot/1", Mode: Shared}, {Name: "volume/1", Mode: Exclusive}},
			{{Name: "node/1", Mode: Exclusive}, {Name: "volume/1", Mode: Shared}},
		}
		var exclusive sync.Map // name → *atomic.Int64 (exclusive holders)
		var shared sync.Map    // name → *atomic.Int64 (shared holders)
		counter := func(m *sync.Map, name string) *atomic.Int64 {
			v, _ := m.LoadOrStore(name, new(atomic.Int64))
			return v.(*atomic.Int64)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for ci := range 2 {
			c := b.client(t, Config{})
			for g := range 4 {
				wg.Go(func() {
					for i := range 5 {
						set := sets[(ci+g+i)%len(sets)]
						locks, err := c.LockAll(ctx, set)
						if err != nil {
							errs <- err
							return
						}
						for k, r := range set {
							if locks[k].Name() != r.Name {
								errs <- errors.New("handles must come in the order asked")
							}
							if r.Mode == Exclusive {
								if counter(&exclusive, r.Name).Add(1) != 1 || counter(&shared, r.Name).Load() != 0 {
									errs <- errors.New("two holders beside an exclusive one on " + r.Name)
								}
							} else if counter(&shared, r.Name).Add(1); counter(&exclusive, r.Name).Load() != 0 {
								errs <- errors.New("a shared holder beside an exclusive one on " + r.Name)
							}
						}
						for _, r := range set {
							if r.Mode == Exclusive {
								counter(&exclusive, r.Name).Add(-1)
							} else {
								counter(&shared, r.Name).Add(-1)
							}
						}
						if err := c.ReleaseAll(ctx, locks); err != nil {
							errs <- err
							return
						}
					}
				})
			}
		}
		wg.Wait() // a deadlock would hang here until the test's context ends
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)))
	})
}

// All or nothing: when one name cannot be had, LockAll holds none.
func TestLockAllAllOrNothing(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, c := b.client(t, Config{}), b.client(t, Config{})
		_, err := a.Lock(ctx, "port/2", Exclusive)
		require.NoError(t, err)
		wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond) // the first answer names port/2, even under load
		defer cancel()
		locks, err := c.LockAll(wctx, []Request{{Name: "port/1", Mode: Exclusive}, {Name: "port/2", Mode: Exclusive}, {Name: "port/0", Mode: Shared}})
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Contains(t, err.Error(), `"port/2"`)
		require.Nil(t, locks)
		require.Equal(t, 1, b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)), "only a's hold remains")

		_, err = c.LockAll(ctx, []Request{{Name: "x", Mode: Exclusive}, {Name: "x", Mode: Shared}})
		require.ErrorIs(t, err, ErrInvalidName)
	})
}
