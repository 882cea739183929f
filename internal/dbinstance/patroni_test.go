//go:build linux

package dbinstance_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/dsn"
)

// A synchronous Patroni cluster behind HAProxy with Patroni's REST health
// check: connections reach the leader; once the leader's machine is
// killed, Patroni promotes the synchronous standby, which has every row
// committed before, and HAProxy sends connections there; the old leader,
// started again, rejoins as the synchronous standby; a replica's killed
// PostgreSQL is restarted by its Patroni.
func TestPatroni(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Patroni cluster")
	}
	t.Parallel()
	p := dbinstance.StartPatroni(t, dbinstance.PatroniOptions{Sync: true})
	t.Logf("Patroni cluster of %d nodes started in %s", len(p.Nodes), p.Started.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var addrs []string
	var ports []int
	for _, n := range p.Nodes {
		addrs = append(addrs, n.Addr())
		ports = append(ports, n.RESTPort())
	}
	h := dbinstance.StartHAProxy(t, addrs, dbinstance.HAProxyOptions{
		CheckInterval: 200 * time.Millisecond, HTTPCheck: "/primary", CheckPorts: ports})
	through := strings.Replace(p.DSN(0), addrs[0], h.Addr(), 1)
	leader, err := p.WaitLeader(ctx)
	require.NoError(t, err)
	require.NoError(t, h.WaitOnlyUp(ctx, leader), "HAProxy's check passes on the leader only")
	db, _, err := dsn.Open(ctx, through)
	require.NoError(t, err)
	defer db.Close()
	port := func() int {
		var port int
		require.NoError(t, db.QueryRowContext(ctx, `SELECT current_setting('port')::int`).Scan(&port))
		return port
	}

	require.Eventually(t, func() bool {
		_, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS t (v int)`)
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "no write through HAProxy")
	require.Equal(t, p.Nodes[leader].Addr(), "127.0.0.1:"+strconv.Itoa(port()), "HAProxy sends connections to the leader")
	for v := range 10 {
		_, err := db.ExecContext(ctx, `INSERT INTO t VALUES ($1)`, v)
		require.NoError(t, err)
	}

	p.Nodes[leader].Crash()
	killed := time.Now()
	next, err := p.WaitLeader(ctx)
	require.NoError(t, err)
	require.NotEqual(t, leader, next)
	t.Logf("%s promoted %s after the leader's kill -9", p.Nodes[next].Name, time.Since(killed).Round(time.Millisecond))
	require.Eventually(t, func() bool {
		_, err := db.ExecContext(ctx, `INSERT INTO t VALUES (10)`)
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "no write through HAProxy after the failover")
	t.Logf("writes through HAProxy again %s after the kill", time.Since(killed).Round(time.Millisecond))
	require.Equal(t, p.Nodes[next].Addr(), "127.0.0.1:"+strconv.Itoa(port()))
	var n int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n))
	require.Equal(t, 11, n, "every row committed before the kill is on the new leader")

	require.NoError(t, p.Nodes[leader].Start())
	require.NoError(t, p.WaitReplicas(ctx, true))
	ms, err := p.Members(ctx)
	require.NoError(t, err)
	t.Logf("after the old leader's restart: %+v", ms)
	require.Equal(t, next, p.Leader(ctx), "the old leader rejoined as a replica")

	p.Nodes[leader].KillPostgres()
	require.NoError(t, p.WaitReplicas(ctx, true), "Patroni restarts a replica's PostgreSQL")
}
