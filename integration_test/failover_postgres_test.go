//go:build linux

package integration_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/faultproxy"
	"github.com/sqldlm/sqldlm/migrations"
)

// The PostgreSQL failover findings P1–P4 of the cluster report
// (../../shared/research/HA-2026-12.md §3, docs/failover-design.md), each a
// deterministic reproduction on a throwaway primary + streaming standby
// whose replication stream runs through a fault proxy: the proxy is cut
// (a partition between primary and standby), the clients act on the
// primary, the primary is killed with kill -9 and the standby promoted;
// the clients reach whichever accepts writes through the pair's multi-host
// DSN.

// failoverTTL is the clients' lease TTL: long enough that a lease outlives
// the crash and the promotion (renewed on the new primary), which is what
// makes the findings silent.
const failoverTTL = 6 * time.Second

// failover is a pair under test, with its replication proxy.
type failover struct {
	t     *testing.T
	pair  *dbinstance.PGPair
	proxy *faultproxy.Proxy
	ctx   context.Context
}

func startFailover(t *testing.T, sync bool) *failover {
	t.Helper()
	skipShort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	f := &failover{t: t, ctx: ctx}
	f.pair = dbinstance.StartPGPair(t, dbinstance.PGPairOptions{Sync: sync, Replication: func(primary string) string {
		px, err := faultproxy.New(primary)
		require.NoError(t, err)
		t.Cleanup(px.Close)
		f.proxy = px
		return px.Addr()
	}})
	db := f.pair.Primary.Open(t)
	_, err := migrations.Up(ctx, db, postgres.Dialect())
	require.NoError(t, err)
	return f
}

// client is a client named owner with a pool of its own on the pair's
// multi-host DSN.
func (f *failover) client(owner string) *sqldlm.Client {
	f.t.Helper()
	db, _, err := dsn.Open(f.ctx, f.pair.DSN())
	require.NoError(f.t, err)
	f.t.Cleanup(func() { db.Close() })
	c, err := sqldlm.New(db, sqldlm.Config{Dialect: postgres.Dialect(), Owner: owner, TTL: failoverTTL})
	require.NoError(f.t, err)
	f.t.Cleanup(func() { c.Close() })
	return c
}

// caughtUp waits until the standby has replayed everything the primary
// has written.
func (f *failover) caughtUp() {
	f.t.Helper()
	var lsn string
	require.NoError(f.t, f.pair.Primary.Open(f.t).QueryRowContext(f.ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn))
	standby := f.pair.Standby.Open(f.t)
	require.Eventually(f.t, func() bool {
		var ok bool
		return standby.QueryRowContext(f.ctx, `SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn`, lsn).Scan(&ok) == nil && ok
	}, 30*time.Second, 10*time.Millisecond, "the standby did not replay up to %s", lsn)
}

// alignTokens grants and releases another name until the token sequence
// has used up its WAL-logged values: the next token then WAL-logs a new
// batch, which the partition keeps from the standby, so the promoted
// standby hands out that same token again (without it the sequence's
// prefetch of 32 usually hides a lost grant).
func (f *failover) alignTokens(c *sqldlm.Client) {
	f.t.Helper()
	primary := f.pair.Primary.Open(f.t)
	for i := 0; ; i++ {
		var logCnt int64
		require.NoError(f.t, primary.QueryRowContext(f.ctx, `SELECT log_cnt FROM sqldlm_holders_token_seq`).Scan(&logCnt))
		if logCnt == 0 {
			return
		}
		require.Less(f.t, i, 100, "the token sequence's log_cnt never reached 0")
		l, err := c.Lock(f.ctx, "align", sqldlm.Exclusive)
		require.NoError(f.t, err)
		require.NoError(f.t, l.Release(f.ctx))
	}
}

// partition cuts the replication stream and refuses its reconnection.
func (f *failover) partition() { f.proxy.Down(true) }

// crashAndPromote kills the primary (kill -9 of the postmaster and its
// children) and promotes the standby.
func (f *failover) crashAndPromote() {
	f.t.Helper()
	start := time.Now()
	f.pair.Primary.Crash()
	require.NoError(f.t, f.pair.Promote())
	f.t.Logf("primary killed and standby promoted in %s", time.Since(start).Round(time.Millisecond))
}

// grant is a lock acknowledged to a client, to check against later grants.
type grant struct {
	who string
	l   *sqldlm.Lock
}

// checkTakeover checks a grant of name after the failover against every
// earlier grant of it: its token is above theirs, and their holders had
// been told (Err not nil) before it was made.
func checkTakeover(t *testing.T, name string, after grant, before ...grant) {
	t.Helper()
	for _, b := range before {
		if b.l == nil {
			continue
		}
		t.Logf("%s's lock of %s (token %d) at %s's grant: Err() = %v", b.who, name, b.l.Token(), after.who, b.l.Err())
		require.NotNil(t, b.l.Err(), "%s still believes it holds %s (token %d) when %s is granted it (token %d)",
			b.who, name, b.l.Token(), after.who, after.l.Token())
		require.Greater(t, after.l.Token(), b.l.Token(), "%s's token for %s is not above %s's", after.who, name, b.who)
	}
}

// lockWithin locks name and fails the test if that takes longer than the
// wait a failover may cost (one TTL of freeze, plus the holder's TTL).
func (f *failover) lockWithin(c *sqldlm.Client, who, name string) grant {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 3*failoverTTL+5*time.Second)
	defer cancel()
	start := time.Now()
	l, err := c.Lock(ctx, name, sqldlm.Exclusive)
	require.NoError(f.t, err, "%s could not lock %s within %s of the promotion: the name is wedged", who, name, 3*failoverTTL+5*time.Second)
	f.t.Logf("%s: granted %s, token %d, %s after asking", who, name, l.Token(), time.Since(start).Round(time.Millisecond))
	return grant{who, l}
}

// tokenRepeatSetup returns clients A and B, with B's grant of s/0 and
// both leases on the standby, and the token sequence aligned: A's next
// grant, if lost, is the token the promoted standby hands out next.
func (f *failover) tokenRepeatSetup() (a, b *sqldlm.Client) {
	f.t.Helper()
	a, b = f.client("A"), f.client("B")
	for _, g := range []struct {
		c    *sqldlm.Client
		name string
	}{{b, "s/0"}, {a, "warm/a"}} {
		l, err := g.c.Lock(f.ctx, g.name, sqldlm.Exclusive)
		require.NoError(f.t, err)
		require.NoError(f.t, l.Release(f.ctx))
	}
	f.alignTokens(b)
	f.caughtUp()
	return a, b
}

// P1: with an asynchronous standby, a grant acknowledged by the old primary
// and lost in the failover must not be handed out again with the same
// token while its holder still believes it holds it.
func TestFailoverP1AsyncLostGrant(t *testing.T) {
	f := startFailover(t, false)
	a, b := f.tokenRepeatSetup()
	// On the standby, sqldlm's statements fail with a connection-class
	// error (the client retries them, on the primary).
	_, err := f.pair.Standby.Open(t).ExecContext(f.ctx, `SELECT * FROM sqldlm_current_epoch()`)
	require.ErrorIs(t, postgres.Dialect().ClassifyError(err), dialect.ErrConnection, "%v", err)

	f.partition()
	la, err := a.Lock(f.ctx, "s/0", sqldlm.Exclusive)
	require.NoError(t, err)
	t.Logf("A: granted s/0, token %d, while the standby was cut off", la.Token())
	f.crashAndPromote()

	gb := f.lockWithin(b, "B", "s/0")
	checkTakeover(t, "s/0", gb, grant{"A", la})
}

// P3: with a synchronous standby, a grant request whose connection is lost
// while its commit waits for the standby is retried by the client; the
// retry must not return the locally committed, unreplicated grant without
// waiting for the standby.
func TestFailoverP3SyncRetriedGrant(t *testing.T) {
	f := startFailover(t, true)
	a, b := f.tokenRepeatSetup()

	f.partition()
	ctx, cancel := context.WithTimeout(f.ctx, 4*time.Second)
	defer cancel()
	got := lockAsync(ctx, a, "s/0", sqldlm.Exclusive)
	// The grant has committed locally and waits for the standby: end its
	// backend, as a network reset or a pooler restart would.
	primary := f.pair.Primary.Open(t)
	var pid int
	require.Eventually(t, func() bool {
		return primary.QueryRowContext(f.ctx, `SELECT pid FROM pg_stat_activity
			WHERE wait_event = 'SyncRep' AND query LIKE '%sqldlm_acquire%' LIMIT 1`).Scan(&pid) == nil
	}, 10*time.Second, 5*time.Millisecond, "no grant waited for the standby")
	_, err := primary.ExecContext(f.ctx, `SELECT pg_terminate_backend($1)`, pid)
	require.NoError(t, err)
	r := <-got
	var ga grant
	if r.err == nil {
		ga = grant{"A", r.l}
		t.Logf("A: granted s/0, token %d, while the standby was cut off", r.l.Token())
	} else {
		t.Logf("A: not granted while the standby was cut off: %v", r.err)
	}
	f.crashAndPromote()

	gb := f.lockWithin(b, "B", "s/0")
	checkTakeover(t, "s/0", gb, ga)
	// With a synchronous standby no grant is acknowledged before the
	// standby has it.
	require.Nil(t, ga.l, "A's grant was acknowledged while the synchronous standby was cut off")
}

// P4: with a synchronous standby, a Release whose ctx ends while its commit
// waits for the standby has committed locally and notified the waiter; the
// waiter must not take that as a grant before the standby has it, and after
// the promotion the resurrected hold and waiter row must not wedge the name.
func TestFailoverP4SyncCancelledRelease(t *testing.T) {
	f := startFailover(t, true)
	a, b, c := f.client("A"), f.client("B"), f.client("C")
	lb, err := b.Lock(f.ctx, "s/0", sqldlm.Exclusive)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	got := lockAsync(ctx, a, "s/0", sqldlm.Exclusive)
	standby := f.pair.Standby.Open(t)
	require.Eventually(t, func() bool {
		var n int
		return standby.QueryRowContext(f.ctx, `SELECT count(*) FROM sqldlm_waiters WHERE name = 's/0'`).Scan(&n) == nil && n == 1
	}, 10*time.Second, 5*time.Millisecond, "A's waiter row never reached the standby")

	f.partition()
	rctx, rcancel := context.WithTimeout(f.ctx, 2*time.Second)
	require.NoError(t, lb.Release(rctx))
	rcancel()
	// A returns by the handover, or not before its ctx ends after the
	// promotion.
	var ga grant
	select {
	case r := <-got:
		require.NoError(t, r.err)
		ga = grant{"A", r.l}
		t.Logf("A: granted s/0 by the handover, token %d, while the standby was cut off", r.l.Token())
	case <-time.After(2 * time.Second):
		t.Logf("A: not granted while the standby was cut off")
	}
	f.crashAndPromote()
	if ga.l == nil {
		cancel()
		if r := <-got; r.err == nil {
			ga = grant{"A", r.l}
		}
	}

	gc := f.lockWithin(c, "C", "s/0")
	checkTakeover(t, "s/0", gc, ga, grant{"B", lb})
	// With a synchronous standby no grant is acknowledged before the
	// standby has it (A's Lock ended with its ctx after the promotion).
	require.Nil(t, ga.l, "A's handed-over grant was acknowledged while the synchronous standby was cut off")
}

// P2: with an asynchronous standby, releases lost in the failover bring
// the holds back on the new primary; they must not keep the names locked
// while their client (which no longer has a Lock for them) lives.
func TestFailoverP2AsyncLostRelease(t *testing.T) {
	f := startFailover(t, false)
	c, d := f.client("C"), f.client("D")
	var held []*sqldlm.Lock
	for i := range 4 {
		l, err := c.Lock(f.ctx, fmt.Sprintf("t/%d", i), sqldlm.Exclusive)
		require.NoError(t, err)
		held = append(held, l)
	}
	l, err := d.Lock(f.ctx, "warm/d", sqldlm.Exclusive)
	require.NoError(t, err)
	require.NoError(t, l.Release(f.ctx))
	f.caughtUp()

	f.partition()
	for _, l := range held {
		require.NoError(t, l.Release(f.ctx))
	}
	f.crashAndPromote()

	for i := range 4 {
		f.lockWithin(d, "D", fmt.Sprintf("t/%d", i))
	}
}

// signalHandler closes seen when a record with message msg is logged.
type signalHandler struct {
	msg  string
	once sync.Once
	seen chan struct{}
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.seen) })
	}
	return nil
}
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *signalHandler) WithGroup(string) slog.Handler      { return h }

// A waiting Lock whose DSN leads to a standby (a failover that has not
// finished, or a node demoted meanwhile) is answered
// read_only_sql_transaction (25006). It keeps asking, within its ctx,
// instead of failing: once the node is promoted it is granted.
func TestFailoverReadOnlyServerRetried(t *testing.T) {
	f := startFailover(t, false)
	f.caughtUp() // the schema is on the standby
	h := &signalHandler{msg: "sqldlm: creating a lease failed, retrying", seen: make(chan struct{})}
	c, err := sqldlm.New(f.pair.Standby.Open(t), sqldlm.Config{Dialect: postgres.Dialect(), Owner: "R", TTL: failoverTTL,
		Logger: slog.New(h)})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(f.ctx, time.Minute)
	defer cancel()
	got := lockAsync(ctx, c, "r/0", sqldlm.Exclusive)
	select {
	case <-h.seen:
	case r := <-got:
		t.Fatalf("Lock on a standby returned at once: %v", r.err)
	}
	f.crashAndPromote()
	r := <-got
	require.NoError(t, r.err, "Lock gave up on the standby instead of waiting for it to accept writes")
	t.Logf("R: granted r/0, token %d, on the promoted standby", r.l.Token())
}
