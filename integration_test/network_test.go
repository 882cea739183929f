package integration_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/faultproxy"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// throughProxy returns a pool on db that reaches the server through a fault
// proxy.
func throughProxy(t *testing.T, db *testdb.DB) (*testdb.DB, *faultproxy.Proxy) {
	t.Helper()
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	p, err := faultproxy.New(u.Host)
	require.NoError(t, err)
	t.Cleanup(p.Close)
	u.Host = p.Addr()
	return testdb.Reopen(t, db.Kind, u.String()), p
}

// A holder cut off from the database learns it lost the lock (Done closes,
// Err is ErrLost) before another client is granted it; when the network
// heals, the buffered renewals revive nothing.
func TestNetworkCutHolderLearnsFirst(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			cut, proxy := throughProxy(t, db)
			ttl := 2 * time.Second
			holderClient, err := sqldlm.New(cut.DB, sqldlm.Config{TTL: ttl, Owner: "cut-off"})
			require.NoError(t, err)
			defer func() {
				proxy.Resume()
				holderClient.Close()
			}()
			other := newClient(t, db, sqldlm.Config{TTL: ttl})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			held, err := holderClient.Lock(ctx, "node/9", sqldlm.Exclusive)
			require.NoError(t, err)
			proxy.Pause()
			cutAt := time.Now()

			got, err := other.Lock(ctx, "node/9", sqldlm.Exclusive)
			require.NoError(t, err)
			grantedAt := time.Now()
			select {
			case <-held.Done():
			default:
				t.Fatal("the other client was granted the lock before the cut-off holder learned it lost it")
			}
			require.ErrorIs(t, held.Err(), sqldlm.ErrLost)
			t.Logf("%s: cut to takeover %s", kind, grantedAt.Sub(cutAt).Round(time.Millisecond))

			proxy.Resume()
			tx, err := cut.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.ErrorIs(t, held.Fence(ctx, tx), sqldlm.ErrLost)
			require.NoError(t, tx.Rollback())
			require.NoError(t, got.Err(), "the new holder keeps the lock after the heal")
		})
	}
}

// G7: a waiting Lock rides out a database that is down for longer than the
// TTL (its lease is lost, and new leases cannot be created meanwhile) and is
// granted once the database is back and the name is free, within its ctx.
// (Before: Lock returned "create lease: connection lost" as soon as a new
// lease could not be created.)
func TestLockWaitsThroughOutageLongerThanTTL(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			cut, proxy := throughProxy(t, db)
			const ttl = time.Second
			hooks := newHookRecorder()
			waiter, err := sqldlm.New(cut.DB, sqldlm.Config{TTL: ttl, Owner: "outage-waiter", Hooks: hooks})
			require.NoError(t, err)
			defer func() {
				proxy.Down(false)
				waiter.Close()
			}()
			holder := newClient(t, db, sqldlm.Config{TTL: 10 * time.Second, Owner: "outage-holder"})
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			held, err := holder.Lock(ctx, "outage/1", sqldlm.Exclusive)
			require.NoError(t, err)
			got := lockAsync(ctx, waiter, "outage/1", sqldlm.Exclusive)
			require.Eventually(t, func() bool {
				infos, err := holder.Locks(ctx, sqldlm.Filter{Owner: "outage-waiter"})
				return err == nil && len(infos) == 1 && len(infos[0].Waiters) == 1
			}, 10*time.Second, 10*time.Millisecond, "the waiter is queued")

			// The outage lasts until the waiter's lease was lost, new leases
			// were asked for (connections refused) after that, and 2 TTL
			// passed.
			proxy.Down(true)
			downAt := time.Now()
			refusedAtLoss := -1
			deadline := time.After(20 * ttl)
			for refusedAtLoss < 0 || proxy.Refused() < refusedAtLoss+3 || time.Since(downAt) < 2*ttl {
				if refusedAtLoss < 0 && hooks.lossCount() > 0 {
					refusedAtLoss = proxy.Refused()
				}
				select {
				case r := <-got:
					t.Fatalf("Lock returned during the outage: %v", r.err)
				case <-deadline:
					t.Fatalf("outage: lease lost %v, %d connections refused", refusedAtLoss >= 0, proxy.Refused())
				case <-time.After(10 * time.Millisecond): // polling the hooks and the proxy's counter
				}
			}
			proxy.Down(false)
			t.Logf("%s: down for %s, %d connections refused", kind, time.Since(downAt).Round(time.Millisecond), proxy.Refused())
			require.NoError(t, held.Release(ctx))

			var r lockResult
			select {
			case r = <-got:
			case <-ctx.Done():
				t.Fatal("the waiter was not granted after the outage")
			}
			require.NoError(t, r.err, "Lock waits through the outage")
			require.NoError(t, r.l.Err())
			require.NoError(t, r.l.Release(ctx))
		})
	}
}
