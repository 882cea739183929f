package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/faultproxy"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// S5: renewals are delayed by 1.5 × TTL on their way to the server (the
// fault proxy delays all the holder's traffic, so a renewal given up after a
// renewal interval and retried on another connection is late too), then the
// network is healthy again. The holder declares the loss by its local
// deadline (the last successful renewal's send time + TTL − margin), before
// the server could have expired the lease, although the late renewal does
// reach the server; and that late renewal revives nothing: the handle stays
// lost and another client takes the name over.
func TestS5SlowRenewal(t *testing.T) {
	t.Parallel()
	skipShort(t)
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			slow, proxy := throughProxy(t, db)
			slow.SetMaxIdleConns(1) // renewals then go over the one idle connection
			const ttl = 2 * time.Second
			hooks := newHookRecorder()
			holder, err := sqldlm.New(slow.DB, sqldlm.Config{TTL: ttl, Owner: "slow", Hooks: hooks, ReapInterval: sqldlm.ReapDisabled})
			require.NoError(t, err)
			defer holder.Close()
			other := newClient(t, db, sqldlm.Config{TTL: ttl})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, err := holder.Lock(ctx, "s5", sqldlm.Exclusive)
			require.NoError(t, err)

			// Find the connection the renewals use: the one that sends
			// during a renewal.
			hooks.waitRenewal(t, 10*time.Second)
			var hb *faultproxy.Conn
			for hb == nil {
				before := map[*faultproxy.Conn]int64{}
				for _, c := range proxy.Conns() {
					before[c], _ = c.Bytes()
				}
				hooks.waitRenewal(t, 10*time.Second)
				var sent []*faultproxy.Conn
				for _, c := range proxy.Conns() {
					if n, _ := c.Bytes(); n > before[c] {
						sent = append(sent, c)
					}
				}
				if len(sent) == 1 {
					hb = sent[0]
				}
				require.Zero(t, hooks.lossCount(), "the lease was lost before the fault (the machine is overloaded)")
			}
			// Right after a renewal, delay everything the holder sends by
			// 1.5 × TTL: its heartbeat connection's next request, and the
			// connections a renewal given up after a renewal interval is
			// retried on.
			hooks.waitRenewal(t, 10*time.Second)
			lastOK := time.Now()
			toServer, _ := hb.Bytes()
			proxy.Delay(ttl * 3 / 2)
			select {
			case <-l.Done():
			case <-time.After(2 * ttl):
				t.Fatal("the holder did not declare the loss")
			}
			lostAt := time.Now()
			proxy.Delay(0) // what was sent until now still arrives 1.5 × TTL late
			require.ErrorIs(t, l.Err(), sqldlm.ErrLost)
			n, _ := hb.Bytes()
			require.Greater(t, n, toServer, "a delayed renewal was sent on the heartbeat connection")
			// The deadline is the last successful renewal's send time + TTL −
			// margin (TTL/10): before the server's expiry, which is at least
			// that send time + TTL.
			lossAfter := lostAt.Sub(lastOK)
			t.Logf("%s: last successful renewal to loss: %s (TTL %s, margin %s)", kind, lossAfter.Round(time.Millisecond), ttl, ttl/10)
			require.Less(t, lossAfter, ttl, "loss declared before the server's expiry")
			require.Greater(t, lossAfter, ttl/2, "and not falsely early")

			// Heal: the late renewal reaches the server after 1.5 × TTL. It
			// must revive nothing.
			require.Eventually(t, func() bool {
				ol, err := other.TryLock(ctx, "s5", sqldlm.Exclusive)
				if err != nil {
					return false
				}
				defer ol.Release(ctx)
				time.Sleep(time.Until(lastOK.Add(ttl*3/2 + 500*time.Millisecond))) // until the late renewal has arrived
				require.NoError(t, ol.Err(), "the late renewal did not take the lock back")
				tx, err := slow.BeginTx(ctx, nil)
				require.NoError(t, err)
				defer tx.Rollback()
				require.ErrorIs(t, l.Fence(ctx, tx), sqldlm.ErrLost, "the lost handle stays lost")
				return true
			}, 10*time.Second, 20*time.Millisecond, "another client takes the name over")
			require.ErrorIs(t, l.Err(), sqldlm.ErrLost)
			require.Equal(t, 1, hooks.lossCount())
		})
	}
}

// blockingRenewals is a dialect whose lease renewals hang (as over a
// paused connection) while block is set, for chosen leases.
type blockingRenewals struct {
	dialect.Dialect
	mu      sync.Mutex
	blocked map[int64]bool
	all     bool
}

func (d *blockingRenewals) RenewLease(ctx context.Context, db *sql.DB, id int64) (bool, error) {
	d.mu.Lock()
	block := d.all || d.blocked[id]
	d.mu.Unlock()
	if block {
		<-ctx.Done()
		return false, dialect.NewError(dialect.ErrConnection, "", ctx.Err())
	}
	return d.Dialect.RenewLease(ctx, db, id)
}

func (d *blockingRenewals) block(id int64) {
	d.mu.Lock()
	d.blocked[id] = true
	d.mu.Unlock()
}

// S7 (etcd#11456): a waiter whose own lease dies while it waits (its
// renewals hang) never gets a handle on the dead lease. When the holder
// then releases, the waiter's Lock either fails or returns a handle on a
// new, live lease, whose fenced write succeeds; the dead lease holds
// nothing and has no waiter row left.
func TestS7WaiterLeaseDies(t *testing.T) {
	t.Parallel()
	skipShort(t)
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			const ttl = 2 * time.Second
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			h := newClient(t, db, sqldlm.Config{TTL: ttl, Owner: "h"})
			d := &blockingRenewals{Dialect: db.Dialect, blocked: map[int64]bool{}}
			hooks := newHookRecorder()
			w := newClient(t, db, sqldlm.Config{TTL: ttl, Owner: "w", Dialect: d, Hooks: hooks, ReapInterval: sqldlm.ReapDisabled})
			held, err := h.Lock(ctx, "s7", sqldlm.Exclusive)
			require.NoError(t, err)

			got := lockAsync(ctx, w, "s7", sqldlm.Exclusive)
			var deadLease int64
			require.Eventually(t, func() bool {
				locks, err := h.Locks(ctx, sqldlm.Filter{Prefix: "s7"})
				require.NoError(t, err)
				if len(locks) == 1 && len(locks[0].Waiters) == 1 {
					deadLease = locks[0].Waiters[0].LeaseID
					return true
				}
				return false
			}, 10*time.Second, 5*time.Millisecond, "w waits")
			d.block(deadLease)
			require.Eventually(t, func() bool { return hooks.lossCount() == 1 }, 3*ttl, 5*time.Millisecond, "w's lease dies")
			require.NoError(t, held.Release(ctx))

			var r lockResult
			select {
			case r = <-got:
			case <-time.After(20 * time.Second):
				t.Fatal("w's Lock did not return")
			}
			if r.err != nil {
				require.True(t, errors.Is(r.err, sqldlm.ErrLost) || errors.Is(r.err, context.DeadlineExceeded), "%v", r.err)
			} else {
				require.NoError(t, r.l.Err())
				locks, err := h.Locks(ctx, sqldlm.Filter{Prefix: "s7"})
				require.NoError(t, err)
				require.Len(t, locks[0].Holders, 1)
				require.NotEqual(t, deadLease, locks[0].Holders[0].LeaseID, "never a grant on the dead lease")
				require.True(t, locks[0].Holders[0].Live)
				require.NoError(t, fencedWrite(ctx, db.DB, kind, r.l, "w"))
				require.NoError(t, r.l.Release(ctx))
			}
			require.Zero(t, count(t, db, `SELECT COUNT(*) FROM `+testdb.Holds(db.Kind)+` WHERE lease_id = ?`, deadLease))
			require.Eventually(t, func() bool {
				return count(t, db, `SELECT COUNT(*) FROM sqldlm_waiters WHERE lease_id = ?`, deadLease) == 0
			}, 2*ttl, 10*time.Millisecond, "no waiter row of the dead lease is left")
		})
	}
}

// S10: the grant's commit is indeterminate: the fault proxy forwards the
// grant's statement, swallows the server's answer (the grant has committed
// by then) and resets the client's connection. Lock's retry (same request
// id) returns a handle for the grant that committed: one hold, the grant's
// token. When the caller gives up instead, as the answer is lost, the name
// is free again within TTL + slack, while the client's lease lives on (no
// orphan hold renewed forever).
//
// Only the grant's answer is lost, not every answer on the proxy: with all
// of them dropped, a Lock that needed a new connection under the suite's
// load never got one, its grant never reached the server, and the lease
// died with its renewals (a CI failure of an earlier form of this test).
func TestS10IndeterminateGrant(t *testing.T) {
	t.Parallel()
	skipShort(t)
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			const ttl = 2 * time.Second
			flaky, proxy := throughTrapProxy(t, db)
			c, err := sqldlm.New(flaky.DB, sqldlm.Config{TTL: ttl, Owner: "s10", ReapInterval: sqldlm.ReapDisabled})
			require.NoError(t, err)
			defer func() {
				proxy.Disarm()
				c.Close()
			}()
			other := newClient(t, db, sqldlm.Config{TTL: ttl})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			keep, err := c.Lock(ctx, "s10/keep", sqldlm.Exclusive) // the lease exists, and lives on
			require.NoError(t, err)

			for _, giveUp := range []bool{false, true} {
				name := "s10/retry"
				if giveUp {
					name = "s10/give-up"
				}
				acquire, ofName := faultproxy.Contains("sqldlm_acquire("), faultproxy.Contains(name)
				trap := proxy.LoseAnswer(func(b []byte) bool { return acquire(b) && ofName(b) })
				callCtx, cancelCall := context.WithCancel(ctx)
				defer cancelCall()
				if giveUp {
					go func() {
						select {
						case <-trap.Fired():
							cancelCall() // the caller gives up as the answer is lost
						case <-callCtx.Done():
						}
					}()
				}
				l, err := c.Lock(callCtx, name, sqldlm.Exclusive)
				failedAt := time.Now()
				select {
				case <-trap.Fired():
				case <-time.After(10 * time.Second):
					t.Fatalf("the fault was not injected: the grant of %s never got its answer", name)
				}
				proxy.Disarm()
				if !giveUp {
					require.NoError(t, err, "the retry returns the grant that committed")
					require.Equal(t, 1, count(t, db, `SELECT COUNT(*) FROM `+testdb.Holds(db.Kind)+` WHERE name = ?`, name), "one hold")
					var token int64
					require.NoError(t, db.QueryRowContext(ctx, q(kind, `SELECT token FROM `+testdb.Holds(kind)+` WHERE name = ?`), name).Scan(&token))
					require.Equal(t, token, l.Token(), "the handle is that grant's")
					var high int64
					require.NoError(t, db.QueryRowContext(ctx, q(kind, `SELECT token FROM sqldlm_locks WHERE name = ?`), name).Scan(&high))
					require.Equal(t, token, high, "the retry granted nothing more: the name's highest token is the handle's")
					require.NoError(t, fencedWrite(ctx, flaky.DB, kind, l, "s10"))
					require.NoError(t, l.Release(ctx))
					require.True(t, isFree(ctx, t, other, name))
					continue
				}
				require.ErrorIs(t, err, context.Canceled)
				require.Eventually(t, func() bool { return isFree(ctx, t, other, name) }, ttl+3*time.Second, 10*time.Millisecond,
					"the unseen grant is withdrawn")
				t.Logf("%s: given-up grant withdrawn %s after the call failed", kind, time.Since(failedAt).Round(time.Millisecond))
			}
			require.NoError(t, keep.Err(), "the lease lived on all along")
			checkJournals(t, db, 1)
		})
	}
}

// S21a: Release while every connection of the holder is paused (or black-
// holed) for 0.5 × TTL. Release returns within its context; after the heal
// the name is free within TTL, although the heartbeat keeps the lease (and
// the holder's other lock) alive: a released lock is never renewed forever.
func TestS21ReleaseWhilePaused(t *testing.T) {
	t.Parallel()
	skipShort(t)
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		for _, fault := range []string{"pause", "blackhole"} {
			t.Run(kind+"/"+fault, func(t *testing.T) {
				t.Parallel()
				db := setup(t, kind)
				const ttl = 2 * time.Second
				cut, proxy := throughProxy(t, db)
				c, err := sqldlm.New(cut.DB, sqldlm.Config{TTL: ttl, Owner: "s21a", ReapInterval: sqldlm.ReapDisabled})
				require.NoError(t, err)
				defer func() {
					proxy.Resume()
					proxy.Blackhole(false)
					c.Close()
				}()
				other := newClient(t, db, sqldlm.Config{TTL: ttl})
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				keep, err := c.Lock(ctx, "s21/keep", sqldlm.Exclusive)
				require.NoError(t, err)
				l, err := c.Lock(ctx, "s21/released", sqldlm.Exclusive)
				require.NoError(t, err)

				if fault == "pause" {
					proxy.Pause()
				} else {
					proxy.Blackhole(true)
				}
				relCtx, relCancel := context.WithTimeout(ctx, ttl/4)
				start := time.Now()
				require.NoError(t, l.Release(relCtx), "Release drops the lock locally and finishes in the background")
				relCancel()
				require.Less(t, time.Since(start), ttl/4+time.Second, "Release returns within its context")
				time.Sleep(time.Until(start.Add(ttl / 2))) // the fault lasts 0.5 × TTL
				proxy.Resume()
				proxy.Blackhole(false)
				healed := time.Now()
				require.Eventually(t, func() bool { return isFree(ctx, t, other, "s21/released") }, ttl+time.Second, 10*time.Millisecond,
					"the released lock is free within the TTL after the heal")
				t.Logf("%s/%s: heal to free: %s", kind, fault, time.Since(healed).Round(time.Millisecond))
				// Well after that, the name is still free. Through a pause the
				// lease lives on: the heartbeat renews it, and must not renew the
				// released hold with it. Through a black hole, a renewal sent into
				// it hangs for a renewal interval before it is retried (on another
				// connection, itself black-holed until the heal): depending on
				// where the fault falls in the renewal cycle, the lease may be lost.
				time.Sleep(ttl)
				if fault == "pause" {
					require.NoError(t, keep.Err(), "the heartbeat kept the lease alive")
				} else if keep.Err() != nil {
					t.Logf("%s/%s: the lease was lost: the renewals sent into the black hole did not get through before the deadline", kind, fault)
				}
				require.True(t, isFree(ctx, t, other, "s21/released"))
			})
		}
	}
}

// S21b: a pool of MaxOpenConns=2, both connections held by the user's long
// transactions while 50 locks are held: the heartbeat cannot renew. The
// locks are declared lost before another client can be granted any of them
// (never silently expired while the holder believes it holds them).
func TestS21PoolExhausted(t *testing.T) {
	t.Parallel()
	skipShort(t)
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			const ttl = 2 * time.Second
			pool := testdb.Reopen(t, kind, db.DSN)
			pool.SetMaxOpenConns(2)
			// On PostgreSQL the listener would keep one of the two connections.
			c, err := sqldlm.New(pool.DB, sqldlm.Config{TTL: ttl, Owner: "s21b", ReapInterval: sqldlm.ReapDisabled})
			require.NoError(t, err)
			defer c.Close()
			other := newClient(t, db, sqldlm.Config{TTL: ttl})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var locks []*sqldlm.Lock
			for i := range 50 {
				l, err := c.Lock(ctx, "s21b/"+string(rune('a'+i/26))+string(rune('a'+i%26)), sqldlm.Exclusive)
				require.NoError(t, err)
				locks = append(locks, l)
			}
			// The user takes every connection the pool has left.
			var txs []*sql.Tx
			txCtx, txCancel := context.WithCancel(ctx) // a transaction ends with its context
			defer txCancel()
			for {
				got := make(chan *sql.Tx, 1)
				go func() {
					tx, err := pool.BeginTx(txCtx, nil)
					if err == nil {
						_, err = tx.ExecContext(txCtx, `SELECT 1`)
					}
					if err != nil {
						got <- nil
						return
					}
					got <- tx
				}()
				var tx *sql.Tx
				select {
				case tx = <-got:
				case <-time.After(500 * time.Millisecond):
				}
				if tx == nil {
					break // the pool has no connection left
				}
				txs = append(txs, tx)
			}
			require.NotEmpty(t, txs)
			exhausted := time.Now()
			// Another client waits for the first lock; when it is granted,
			// every lock of the starved holder must already be lost.
			got, err := other.Lock(ctx, locks[0].Name(), sqldlm.Exclusive)
			require.NoError(t, err)
			for _, l := range locks {
				select {
				case <-l.Done():
				default:
					t.Fatalf("%s was granted to another client while its holder still believed it held it", l.Name())
				}
				require.ErrorIs(t, l.Err(), sqldlm.ErrLost)
			}
			t.Logf("%s: pool exhausted to takeover %s (TTL %s)", kind, time.Since(exhausted).Round(time.Millisecond), ttl)
			txCancel() // the user's transactions end, and a waiting BeginTx gives up
			t.Logf("%s: the user held %d connection(s)", kind, len(txs))
			require.NoError(t, got.Release(ctx))
			// The holder recovers: a new lease, new locks.
			l, err := c.Lock(ctx, "s21b/after", sqldlm.Exclusive)
			require.NoError(t, err)
			require.NoError(t, l.Release(ctx))
		})
	}
}
