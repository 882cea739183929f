package integration_test

import (
	"context"
	"errors"
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

// throughTrapProxy is throughProxy for tests that lose one statement's
// answer (faultproxy.Proxy.LoseAnswer): a trap picks the statement by its
// text, which PostgreSQL sends with every execution in the simple protocol,
// and which the proxy shows beside the execution of a MariaDB prepared
// statement.
func throughTrapProxy(t *testing.T, db *testdb.DB) (*testdb.DB, *faultproxy.Proxy) {
	t.Helper()
	cut, p := throughProxy(t, db)
	p.ShowPreparedText(db.Kind == testdb.MySQL)
	dsn := cut.DSN
	if db.Kind == testdb.Postgres {
		dsn = withParam(t, dsn, "default_query_exec_mode", "simple_protocol")
	}
	return testdb.Reopen(t, db.Kind, dsn), p
}

// cutOffClient returns a client that reaches db through a fault proxy, with
// its pool and the proxy. At the test's end the proxy forwards again before
// the client closes.
func cutOffClient(t *testing.T, db *testdb.DB, cfg sqldlm.Config) (*sqldlm.Client, *testdb.DB, *faultproxy.Proxy) {
	t.Helper()
	cut, proxy := throughProxy(t, db)
	c, err := sqldlm.New(cut.DB, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		proxy.Resume()
		c.Close()
	})
	return c, cut, proxy
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
			ttl := 2 * time.Second
			holderClient, cut, proxy := cutOffClient(t, db, sqldlm.Config{TTL: ttl, Owner: "cut-off"})
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

// A member, a leader and a semaphore permit holder cut off from the
// database (the proxy stops forwarding, for longer than the TTL) each learn
// they are out (Done closes, Err is ErrLost) before a peer sees the member
// leave, before a new leader's Campaign returns, and before a permit beyond
// the limit is granted. Once the network heals, the buffered renewals
// revive nothing: the stale leadership and permit fence nothing, the limit
// holds, and the cut-off client joins again with a higher incarnation (a
// watcher sees the member leave, then join), and leads and holds a permit
// again once the peer gives them up.
func TestNetworkCutCoordinationLearnsFirst(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			const ttl = 2 * time.Second
			a, cut, proxy := cutOffClient(t, db, sqldlm.Config{TTL: ttl, Owner: "cut-off"})
			peer := newClient(t, db, sqldlm.Config{TTL: ttl, Owner: "peer", WatchInterval: 50 * time.Millisecond})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			m, err := a.Join(ctx, "conductors", "cut-1")
			require.NoError(t, err)
			ld, err := a.Campaign(ctx, "scheduler", "cut-1")
			require.NoError(t, err)
			const limit = 2
			p, err := a.Semaphore("slots", limit).Acquire(ctx)
			require.NoError(t, err)
			first, err := peer.Semaphore("slots", limit).Acquire(ctx) // the limit's other permit
			require.NoError(t, err)
			w, err := peer.Watch(ctx, "conductors")
			require.NoError(t, err)
			defer w.Close()
			e := <-w.Events()
			require.Equal(t, sqldlm.Resync, e.Kind)
			require.Len(t, e.View.Members, 1)

			// Each peer step reports, as it completes, whether the cut-off
			// handle it displaces knew it was out: its Err (which checks the
			// lease's trust deadline itself, however late the deadline's
			// timer runs) is ErrLost, and its Done is closed.
			type step struct {
				knew bool
				err  error
			}
			knew := func(err func() error, done <-chan struct{}) bool {
				if !errors.Is(err(), sqldlm.ErrLost) {
					return false
				}
				select {
				case <-done:
					return true
				default:
					return false
				}
			}
			var newLeader *sqldlm.Leadership
			elected := make(chan step, 1)
			go func() {
				var err error
				newLeader, err = peer.Campaign(ctx, "scheduler", "peer")
				elected <- step{knew(ld.Err, ld.Done()), err}
			}()
			var second *sqldlm.Permit
			granted := make(chan step, 1)
			go func() {
				var err error
				second, err = peer.Semaphore("slots", limit).Acquire(ctx)
				granted <- step{knew(p.Err, p.Done()), err}
			}()

			proxy.Pause()
			cutAt := time.Now()
			for pending := 3; pending > 0; pending-- {
				select {
				case e := <-w.Events():
					require.Equal(t, sqldlm.MemberLeft, e.Kind, "event %+v", e)
					require.Equal(t, m.Incarnation(), e.Member.Incarnation)
					require.True(t, knew(m.Err, m.Done()), "a peer saw the member leave before the member knew it was out")
					t.Logf("%s: cut to MemberLeft %s", kind, time.Since(cutAt).Round(time.Millisecond))
				case s := <-elected:
					require.NoError(t, s.err)
					require.True(t, s.knew, "a new leader was elected before the cut-off leader knew it was deposed")
					require.Greater(t, newLeader.Term(), ld.Term())
					t.Logf("%s: cut to a new leader %s", kind, time.Since(cutAt).Round(time.Millisecond))
				case s := <-granted:
					require.NoError(t, s.err)
					require.True(t, s.knew, "a permit beyond the limit was granted before the cut-off holder knew it lost its own")
					t.Logf("%s: cut to the permit's takeover %s", kind, time.Since(cutAt).Round(time.Millisecond))
				case <-ctx.Done():
					t.Fatalf("%d of the peer's steps did not complete", pending)
				}
			}

			proxy.Resume()
			tx, err := cut.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.ErrorIs(t, ld.Fence(ctx, tx), sqldlm.ErrLost)
			require.ErrorIs(t, p.Fence(ctx, tx), sqldlm.ErrLost)
			require.NoError(t, tx.Rollback())
			require.ErrorIs(t, m.SetMeta(ctx, "back"), sqldlm.ErrLost, "a lost membership stays lost")
			li, err := peer.Leader(ctx, "scheduler")
			require.NoError(t, err)
			require.Equal(t, newLeader.Term(), li.Term, "the new leader keeps the election after the heal")
			require.NoError(t, newLeader.Err())
			require.NoError(t, first.Err())
			require.NoError(t, second.Err())
			_, err = a.Semaphore("slots", limit).TryAcquire(ctx)
			require.ErrorIs(t, err, sqldlm.ErrLocked, "both permits are the peer's after the heal")

			again, err := a.Join(ctx, "conductors", "cut-1")
			require.NoError(t, err, "the cut-off client joins again after the heal")
			require.Greater(t, again.Incarnation(), m.Incarnation())
			select {
			case e = <-w.Events():
			case <-ctx.Done():
				t.Fatal("the watcher did not see the member join again")
			}
			require.Equal(t, sqldlm.MemberJoined, e.Kind, "event %+v", e)
			require.Equal(t, again.Incarnation(), e.Member.Incarnation)
			require.Equal(t, "cut-off", e.Member.Owner)
			// It leads again, with a higher term, and holds a permit again,
			// once the peer gives them up.
			require.NoError(t, newLeader.Resign(ctx))
			ld, err = a.Campaign(ctx, "scheduler", "cut-1")
			require.NoError(t, err)
			require.Greater(t, ld.Term(), newLeader.Term())
			require.NoError(t, second.Release(ctx))
			p, err = a.Semaphore("slots", limit).TryAcquire(ctx)
			require.NoError(t, err)
			require.NoError(t, p.Release(ctx))
			require.NoError(t, ld.Resign(ctx))
		})
	}
}
