//go:build linux

package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

// Patroni with synchronous_mode, as deployments run it: two PostgreSQL
// nodes managed by Patroni (etcd as its store, ttl 10 s, loop_wait 1 s,
// use_pg_rewind), and every client behind HAProxy, whose health check asks
// each node's Patroni REST API for GET /primary. A holder writes under its
// lock through HAProxy while a waiter waits; the leader's machine is
// killed (Patroni and PostgreSQL, kill -9). Twice on one cluster, with
// lease TTLs of 2 s and of 15 s, the first old leader started again in
// between:
//
//   - the holder is told (its Lock's Err set) before the waiter is granted,
//     and the waiter's token is a new epoch's (2^32 above the holder's);
//   - every fenced write the holder saw committed is on the new leader;
//   - the first old leader, started again, rejoins as the synchronous
//     standby (pg_rewind if it diverged); it brings back no hold and
//     wedges no name, and it is the one promoted at the second kill;
//   - kill → the waiter granted is measured (the takeover time).
func TestPatroniFailover(t *testing.T) {
	skipShort(t)
	t.Parallel()
	p := dbinstance.StartPatroni(t, dbinstance.PatroniOptions{Sync: true})
	t.Logf("Patroni cluster started in %s", p.Started.Round(time.Millisecond))
	var addrs []string
	var ports []int
	for _, n := range p.Nodes {
		addrs = append(addrs, n.Addr())
		ports = append(ports, n.RESTPort())
	}
	proxy := dbinstance.StartHAProxy(t, addrs, dbinstance.HAProxyOptions{HTTPCheck: "/primary", CheckPorts: ports})
	through := strings.Replace(p.DSN(0), addrs[0], proxy.Addr(), 1)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	open := func() *sql.DB {
		db, _, err := dsn.Open(ctx, through)
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		return db
	}
	leader, err := p.WaitLeader(ctx)
	require.NoError(t, err)
	require.NoError(t, proxy.WaitOnlyUp(ctx, leader))
	setup := open()
	_, err = migrations.Up(ctx, setup, postgres.Dialect())
	require.NoError(t, err)
	_, err = setup.ExecContext(ctx, `CREATE TABLE volumes (id int PRIMARY KEY, writes int NOT NULL, token bigint NOT NULL);
		INSERT INTO volumes VALUES (1, 0, 0)`)
	require.NoError(t, err)

	var tokens []int64 // every grant of volume/1, in order
	for round, ttl := range []time.Duration{2 * time.Second, 15 * time.Second} {
		newClient := func(owner string) *sqldlm.Client {
			c, err := sqldlm.New(open(), sqldlm.Config{Dialect: postgres.Dialect(), Owner: owner, TTL: ttl})
			require.NoError(t, err)
			t.Cleanup(func() { c.Close() })
			return c
		}
		holder, waiter := newClient("holder"), newClient("waiter")
		l, err := holder.Lock(ctx, "volume/1", sqldlm.Exclusive)
		require.NoError(t, err)
		tokens = append(tokens, l.Token())

		// The fenced writer: each write's COMMIT that returns nil is
		// acknowledged; it stops when told its lock is lost.
		var (
			mu    sync.Mutex
			acked int
		)
		appDB := open()
		write := func() error {
			tx, err := appDB.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if err := l.Fence(ctx, tx); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE volumes SET writes = writes + 1, token = $1 WHERE id = 1`, l.Token()); err != nil {
				return err
			}
			return tx.Commit()
		}
		writerDone := make(chan struct{})
		go func() {
			defer close(writerDone)
			for l.Err() == nil && ctx.Err() == nil {
				err := write()
				mu.Lock()
				if err == nil {
					acked++
				}
				mu.Unlock()
				if err != nil && !errors.Is(err, sqldlm.ErrLost) {
					time.Sleep(50 * time.Millisecond) // the writer's own retry pace, not synchronisation
				}
			}
		}()

		// The waiter; holderErr is the holder's Err() the moment the
		// waiter's Lock returned.
		type result struct {
			l         *sqldlm.Lock
			err       error
			holderErr error
			at        time.Time
		}
		granted := make(chan result, 1)
		go func() {
			wl, err := waiter.Lock(ctx, "volume/1", sqldlm.Exclusive)
			granted <- result{wl, err, l.Err(), time.Now()}
		}()

		require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return acked >= 10 }, 30*time.Second, 10*time.Millisecond)
		old := p.Leader(ctx)
		require.GreaterOrEqual(t, old, 0, "no leader before the kill")
		p.Nodes[old].Crash()
		killed := time.Now()

		var r result
		select {
		case r = <-granted:
		case <-time.After(ttl + 45*time.Second):
			t.Fatalf("TTL %s: the waiter was not granted within %s of the leader's kill", ttl, ttl+45*time.Second)
		}
		require.NoError(t, r.err)
		next := p.Leader(ctx)
		t.Logf("TTL %s: %s killed, %s leader; waiter granted %s after the kill (token %d, holder's %d); holder told: %v",
			ttl, p.Nodes[old].Name, p.Nodes[max(next, 0)].Name, r.at.Sub(killed).Round(time.Millisecond), r.l.Token(), l.Token(), r.holderErr)
		require.ErrorIs(t, r.holderErr, sqldlm.ErrLost, "the holder was not told before the waiter's grant")
		require.NotEqual(t, old, next, "the waiter was granted before another node was promoted")
		require.GreaterOrEqual(t, r.l.Token()-l.Token(), int64(1)<<32,
			"the waiter's token is not a new epoch's: sqldlm did not see Patroni's promotion as a failover")
		tokens = append(tokens, r.l.Token())
		<-writerDone

		var writes int
		var lastToken int64
		require.NoError(t, setup.QueryRowContext(ctx, `SELECT writes, token FROM volumes WHERE id = 1`).Scan(&writes, &lastToken))
		mu.Lock()
		require.GreaterOrEqual(t, writes, acked, "an acknowledged fenced write was lost in the failover")
		t.Logf("TTL %s: %d fenced writes acknowledged in total, %d in the table", ttl, acked, writes)
		mu.Unlock()
		// The next round's writes count from here.
		_, err = setup.ExecContext(ctx, `UPDATE volumes SET writes = 0 WHERE id = 1`)
		require.NoError(t, err)
		require.NoError(t, r.l.Release(ctx))

		if round == 0 {
			// The old leader comes back as the synchronous standby, and is
			// the one promoted at the next kill.
			restarted := time.Now()
			require.NoError(t, p.Nodes[old].Start())
			require.NoError(t, p.WaitReplicas(ctx, true))
			log := p.Nodes[old].Log()
			t.Logf("TTL %s: %s rejoined as the synchronous standby in %s (pg_rewind ran: %t, exit code 0: %t)",
				ttl, p.Nodes[old].Name, time.Since(restarted).Round(time.Millisecond),
				strings.Contains(log, "running pg_rewind from"), strings.Contains(log, "pg_rewind exit code=0"))
		}

		// Nothing of the old leader's came back: no hold on the leader,
		// and both clients take volume/1 within a freeze.
		var holds int
		require.NoError(t, setup.QueryRowContext(ctx, `SELECT count(*) FROM `+testdb.Holds(testdb.Postgres)).Scan(&holds))
		require.Zero(t, holds, "holds came back with the old leader")
		for _, c := range []*sqldlm.Client{holder, waiter} {
			tctx, tcancel := context.WithTimeout(ctx, 2*ttl+5*time.Second)
			again, err := c.Lock(tctx, "volume/1", sqldlm.Exclusive)
			tcancel()
			require.NoError(t, err, "volume/1 is wedged after failover %d", round+1)
			tokens = append(tokens, again.Token())
			require.NoError(t, again.Release(ctx))
		}
	}
	for k := 1; k < len(tokens); k++ {
		require.Greater(t, tokens[k], tokens[k-1], "tokens of volume/1 in grant order: %v", tokens)
	}
	t.Logf("tokens of volume/1 in grant order: %v", tokens)
}
