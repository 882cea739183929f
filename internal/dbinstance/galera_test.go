//go:build linux

package dbinstance_test

import (
	"context"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/dbinstance"
)

// TestGalera starts a 3-node cluster, checks that a write on one node is
// read on the others, kills a node and restarts it (it rejoins by IST).
func TestGalera(t *testing.T) {
	c := dbinstance.StartGalera(t, 3)
	var rss []int64
	for _, n := range c.Nodes {
		rss = append(rss, n.RSS()>>20)
	}
	t.Logf("cluster of 3 Synced in %v; RSS per node %v MB", c.Started.Round(10*time.Millisecond), rss)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db0 := c.Nodes[0].Open(t)
	if _, err := db0.ExecContext(ctx, "CREATE TABLE t (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := db0.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	for k, n := range c.Nodes {
		var size string
		if err := n.Open(t).QueryRowContext(ctx, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'wsrep_cluster_size'").Scan(&size); err != nil {
			t.Fatal(err)
		}
		if size != "3" {
			t.Errorf("node %d: wsrep_cluster_size = %s, want 3", k, size)
		}
		var got int
		// wsrep_sync_wait: the read waits until the node has applied
		// everything committed before it, instead of the test sleeping.
		db := n.Open(t)
		db.SetMaxOpenConns(1)
		if _, err := db.ExecContext(ctx, "SET SESSION wsrep_sync_wait = 1"); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&got); err != nil || got != 1 {
			t.Errorf("node %d: %d rows (%v), want 1", k, got, err)
		}
	}

	c.Nodes[2].Crash()
	if _, err := db0.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := c.Nodes[2].Start(); err != nil {
		t.Fatalf("restart node 2: %v\n%s", err, c.Nodes[2].LogTail(30))
	}
	t.Logf("node 2 rejoined %v after kill -9", time.Since(t0).Round(10*time.Millisecond))
	db2 := c.Nodes[2].Open(t)
	db2.SetMaxOpenConns(1)
	if _, err := db2.ExecContext(ctx, "SET SESSION wsrep_sync_wait = 1"); err != nil {
		t.Fatal(err)
	}
	var got int
	if err := db2.QueryRowContext(ctx, "SELECT COUNT(*) FROM t").Scan(&got); err != nil || got != 2 {
		t.Errorf("node 2 after rejoin: %d rows (%v), want 2", got, err)
	}
}
