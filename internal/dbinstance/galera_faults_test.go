//go:build linux

package dbinstance_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/dbinstance"
)

// TestGaleraFaults: a cluster in network namespaces. An isolated node goes
// non-Primary and refuses queries from a client that still reaches it,
// while the other two commit; healed, it rejoins and has their writes.
// Then node 0 is killed, a row is written on the two others, and they are
// killed too: Recover bootstraps from a node that has that row (the highest
// seqno), not node 0, and every acknowledged row is there afterwards.
func TestGaleraFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and partitions a 3-node cluster for about a minute")
	}
	c := dbinstance.StartGaleraWith(t, dbinstance.GaleraOptions{Nodes: 3, Netns: true, ProviderOptions: "evs.suspect_timeout=PT2S;evs.keepalive_period=PT0.5S"})
	t.Logf("cluster of 3 in network namespaces Synced in %v; node addresses %s, %s, %s",
		c.Started.Round(10*time.Millisecond), c.Nodes[0].Addr(), c.Nodes[1].Addr(), c.Nodes[2].Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	exec := func(k int, stmt string) error {
		db := c.Nodes[k].Open(t)
		defer db.Close()
		_, err := db.ExecContext(ctx, stmt)
		return err
	}
	count := func(k int) int {
		db := c.Nodes[k].Open(t)
		defer db.Close()
		db.SetMaxOpenConns(1)
		var n int
		if _, err := db.ExecContext(ctx, "SET SESSION wsrep_sync_wait = 1"); err != nil {
			t.Fatalf("node %d: %v", k, err)
		}
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&n); err != nil {
			t.Fatalf("node %d: %v", k, err)
		}
		return n
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(exec(0, "CREATE TABLE t (id INT PRIMARY KEY)"))
	must(exec(0, "INSERT INTO t VALUES (1)"))

	// Partition node 2 from 0 and 1.
	t0 := time.Now()
	must(c.Isolate(2))
	s, err := c.WaitState(2, 30*time.Second, func(s dbinstance.NodeState) bool { return s.Status == "non-Primary" })
	must(err)
	t.Logf("isolated node 2 is %s (%s) after %v", s.Status, s.State, time.Since(t0).Round(10*time.Millisecond))
	if err := exec(2, "INSERT INTO t VALUES (99)"); err == nil || !strings.Contains(err.Error(), "1047") {
		t.Errorf("a write on the minority node: %v, want error 1047", err)
	}
	db2 := c.Nodes[2].Open(t)
	var n int
	if err := db2.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&n); err == nil || !strings.Contains(err.Error(), "1047") {
		t.Errorf("a read on the minority node: %d, %v; want error 1047", n, err)
	}
	_, err = c.WaitState(0, 30*time.Second, func(s dbinstance.NodeState) bool { return s.Status == "Primary" && s.Size == 2 })
	must(err)
	must(exec(0, "INSERT INTO t VALUES (2)"))
	t0 = time.Now()
	must(c.Heal())
	_, err = c.WaitState(2, time.Minute, dbinstance.Synced(3))
	must(err)
	t.Logf("healed node 2 Synced in a cluster of 3 after %v", time.Since(t0).Round(10*time.Millisecond))
	if got := count(2); got != 2 {
		t.Errorf("node 2 after the partition: %d rows, want 2", got)
	}

	// Node 0 dies first; the others commit row 3, then die.
	c.Nodes[0].Crash()
	_, err = c.WaitState(1, 30*time.Second, func(s dbinstance.NodeState) bool { return s.Status == "Primary" && s.Size == 2 })
	must(err)
	must(exec(1, "INSERT INTO t VALUES (3)"))
	c.Nodes[1].Crash()
	c.Nodes[2].Crash()
	r, err := c.Recover(-1)
	must(err)
	t.Logf("whole cluster recovered in %v: seqnos %v, bootstrapped node %d", r.Took.Round(10*time.Millisecond), r.Seqnos, r.Bootstrap)
	if r.Bootstrap == 0 || r.Seqnos[0] >= r.Seqnos[r.Bootstrap] {
		t.Errorf("bootstrapped node %d with seqnos %v; want the highest, not node 0 (killed first)", r.Bootstrap, r.Seqnos)
	}
	for k := range c.Nodes {
		if got := count(k); got != 3 {
			t.Errorf("node %d after recovery: %d rows, want 3", k, got)
		}
	}
}
