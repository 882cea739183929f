//go:build linux

package migrations_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/migrations"
)

// TestGaleraConcurrentMigrate runs three migrators at once on fresh
// databases of a 3-node Galera cluster (HA-2026-12 G1 and G2): one per
// node, and all three through node 0, on an empty database and on one whose
// version table goose had already created. Every migrator must succeed and
// every node must end at the latest version.
//
// Before the migration lock covered the version table and was cluster-wide,
// the empty database was left with an empty version table and every
// migrator failed ("missing zero version migration"; G1), and with the
// version table present two of three failed with "Table 'sqldlm_leases'
// already exists" (G2).
func TestGaleraConcurrentMigrate(t *testing.T) {
	cl := dbinstance.StartGalera(t, 3)
	t.Logf("cluster Synced in %v", cl.Started.Round(10*time.Millisecond))
	d := mysql.Dialect()
	latest, err := migrations.Latest(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("GET_LOCK is per node", func(t *testing.T) { getLockIsPerNode(t, cl) })
	admin := cl.Nodes[0].Open(t)
	const trials = 4
	for c, tc := range []struct {
		name         string
		nodes        []int
		versionTable bool // goose's version table exists (with version 0) before the race
	}{
		{"one per node", []int{0, 1, 2}, false},
		{"three on node 0", []int{0, 0, 0}, false},
		{"one per node, version table present", []int{0, 1, 2}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for trial := range trials {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				name := fmt.Sprintf("g_%d_%d", c, trial)
				if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
					t.Fatal(err)
				}
				if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
					t.Fatal(err)
				}
				appliedEverywhere(t, ctx, cl, name)
				var dbs []*sql.DB
				for _, k := range tc.nodes {
					dbs = append(dbs, openOn(t, ctx, cl.Nodes[k], name))
				}
				if tc.versionTable {
					// goose's Status creates the version table and its
					// version 0 row, as a first HasPending does.
					if _, err := migrations.Status(ctx, dbs[0], d); err != nil {
						t.Fatal(err)
					}
					appliedEverywhere(t, ctx, cl, name)
				}
				start := make(chan struct{})
				errs := make([]error, len(dbs))
				var wg sync.WaitGroup
				for m, db := range dbs {
					wg.Go(func() {
						<-start
						_, errs[m] = migrations.Up(ctx, db, d)
					})
				}
				close(start)
				wg.Wait()
				for m, err := range errs {
					if err != nil {
						t.Errorf("trial %d: migrator %d (node %d): %v", trial, m, tc.nodes[m], err)
					}
				}
				for k, n := range cl.Nodes {
					db := openOn(t, ctx, n, name)
					db.SetMaxOpenConns(1)
					// Read what the node has applied of everything committed
					// before (no sleep).
					if _, err := db.ExecContext(ctx, "SET SESSION wsrep_sync_wait = 1"); err != nil {
						t.Fatal(err)
					}
					if v, err := migrations.Current(ctx, db, d); err != nil || v != latest {
						t.Errorf("trial %d: node %d at schema version %d (%v), want %d", trial, k, v, err, latest)
					}
				}
				if t.Failed() {
					return
				}
			}
		})
	}
}

// appliedEverywhere returns once every node has applied what was committed
// before the call (a causal read with wsrep_sync_wait, not a sleep), so that
// the database name exists on every node.
func appliedEverywhere(t *testing.T, ctx context.Context, cl *dbinstance.Cluster, name string) {
	t.Helper()
	for k, n := range cl.Nodes {
		db := openOn(t, ctx, n, "test")
		db.SetMaxOpenConns(1)
		var found int
		if _, err := db.ExecContext(ctx, "SET SESSION wsrep_sync_wait = 1"); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", name).Scan(&found); err != nil || found != 1 {
			t.Fatalf("node %d: database %s found %d times (%v)", k, name, found, err)
		}
		db.Close()
	}
}

// openOn opens a pool on database name of node n, closed when t ends.
func openOn(t *testing.T, ctx context.Context, n *dbinstance.Instance, name string) *sql.DB {
	t.Helper()
	db, _, err := dsn.Open(ctx, strings.Replace(n.DSN(), "/test?", "/"+name+"?", 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// getLockIsPerNode documents why the migration lock cannot be GET_LOCK on
// Galera (HA-2026-12 G2): two sessions on two nodes both get the same lock,
// while a second session on the same node does not.
func getLockIsPerNode(t *testing.T, c *dbinstance.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	getLock := func(db *sql.DB) int {
		var got sql.NullInt64
		if err := db.QueryRowContext(ctx, "SELECT GET_LOCK('sqldlm:g2', 0)").Scan(&got); err != nil {
			t.Fatal(err)
		}
		return int(got.Int64)
	}
	a, b, a2 := c.Nodes[0].Open(t), c.Nodes[1].Open(t), c.Nodes[0].Open(t)
	for _, db := range []*sql.DB{a, b, a2} {
		db.SetMaxOpenConns(1)
	}
	if got := getLock(a); got != 1 {
		t.Fatalf("node 0: GET_LOCK = %d, want 1", got)
	}
	if got := getLock(a2); got != 0 {
		t.Errorf("node 0, second session: GET_LOCK = %d, want 0 (held)", got)
	}
	if got := getLock(b); got != 1 {
		t.Errorf("node 1: GET_LOCK = %d; it was 1 (a node-local lock) when this test was written", got)
	}
}
