//go:build linux

package dbinstance

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql" // the readiness probe speaks to the node's socket
)

// Galera is the kind name of a MariaDB Galera cluster in SQLDLM_TEST_REQUIRE.
const Galera Kind = "galera"

// galeraProvider is Debian's galera-4 wsrep provider.
const galeraProvider = "/usr/lib/galera/libgalera_smm.so"

// Cluster is a throwaway MariaDB Galera cluster: n nodes of the installed
// mariadbd and Debian's galera-4 on one machine, each an [Instance] with its
// own directory and free loopback ports (SQL, group communication, IST and
// rsync SST). Node 0 bootstrapped the cluster; every node replicates the
// database "test" and the root@127.0.0.1 account.
//
// A node can be stopped (Stop), killed (Crash) and started again (Start),
// which rejoins the cluster by IST or SST as long as another node is up.
// A cluster whose nodes are all down is brought back by Recover
// (galera_faults.go).
type Cluster struct {
	Nodes []*Instance
	// Started is how long StartGalera took, from nothing to every node Synced.
	Started time.Duration

	net *topology // the nodes' network namespaces, with GaleraOptions.Netns
}

type galeraNode struct {
	index      int
	host       string // the address it listens on: 127.0.0.1, or its network namespace's
	options    string // extra wsrep provider options (GaleraOptions.ProviderOptions)
	gcomm      int    // group communication port
	ist        int    // incremental state transfer receive port
	sst        int    // rsync state snapshot transfer receive port
	cluster    string
	bootstrap  bool // start with --wsrep-new-cluster (the first start of node 0 only)
	socketFile string
}

func (g *galeraNode) args() []string {
	a := []string{
		"--binlog-format=ROW",
		"--default-storage-engine=InnoDB",
		"--innodb-autoinc-lock-mode=2",
		"--wsrep-on=ON",
		"--wsrep-provider=" + galeraProvider,
		"--wsrep-cluster-name=sqldlm_test",
		"--wsrep-cluster-address=" + g.cluster,
		"--wsrep-node-name=n" + strconv.Itoa(g.index),
		"--bind-address=" + g.host,
		"--wsrep-node-address=" + g.host + ":" + strconv.Itoa(g.gcomm),
		"--wsrep-sst-method=rsync",
		"--wsrep-sst-receive-address=" + g.host + ":" + strconv.Itoa(g.sst),
		fmt.Sprintf("--wsrep-provider-options=base_port=%d;ist.recv_addr=%s:%d;gcache.size=32M%s", g.gcomm, g.host, g.ist, g.options),
	}
	if g.bootstrap {
		a = append(a, "--wsrep-new-cluster")
	}
	return a
}

// ready reports nil once the node answers on its socket and is Synced.
func (g *galeraNode) ready(ctx context.Context, i *Instance) error {
	db, err := sql.Open("mysql", "root@unix("+g.socketFile+")/mysql")
	if err != nil {
		return err
	}
	defer db.Close()
	var name, state string
	if err := db.QueryRowContext(ctx, `SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'`).Scan(&name, &state); err != nil {
		return err
	}
	if state != "Synced" {
		return fmt.Errorf("node %d is %s, not Synced", g.index, state)
	}
	if g.bootstrap {
		// Once: the account the DSNs use and the test database, which
		// replicate to the nodes that join.
		clients := "127.0.0.1"
		if g.host != clients {
			clients = netnsClients // the bridge's address, in the host's namespace
		}
		for _, stmt := range []string{
			"CREATE USER IF NOT EXISTS 'root'@'" + clients + "'",
			"GRANT ALL PRIVILEGES ON *.* TO 'root'@'" + clients + "' WITH GRANT OPTION",
			"CREATE DATABASE IF NOT EXISTS test",
		} {
			if _, err := db.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("%s: %w", stmt, err)
			}
		}
		g.bootstrap = false // a restart of node 0 joins the others
	}
	return nil
}

// StartGalera starts a Galera cluster of n nodes and waits until every node
// is Synced; t.Cleanup kills the nodes and removes their directories. It
// skips t when mariadbd or galera-4 is not installed, unless
// SQLDLM_TEST_REQUIRE names "galera".
func StartGalera(t testing.TB, n int) *Cluster {
	t.Helper()
	return StartGaleraWith(t, GaleraOptions{Nodes: n})
}

// StartGaleraWith starts a Galera cluster as o says (see StartGalera).
func StartGaleraWith(t testing.TB, o GaleraOptions) *Cluster {
	t.Helper()
	clusterStage(t)
	n := o.Nodes
	bins, why := findBinaries(MySQL)
	if why == "" {
		if _, err := os.Stat(galeraProvider); err != nil {
			why = "galera-4 is not installed (" + galeraProvider + " missing; apt-get install galera-4)"
		} else if _, err := lookPath("rsync", "/usr/bin/rsync"); err != nil {
			why = "rsync is not installed (state transfers use it; apt-get install rsync)"
		}
	}
	if why == "" && o.Netns {
		why = netnsUnavailable()
	}
	if why != "" {
		msg := "dbinstance: no throwaway Galera cluster: " + why
		if required(string(Galera)) {
			t.Fatalf("%s (SQLDLM_TEST_REQUIRE=%s makes this a failure)", msg, os.Getenv("SQLDLM_TEST_REQUIRE"))
		}
		t.Skip(msg)
	}
	sweepOnce.Do(sweepStale)
	began := time.Now()

	c := &Cluster{}
	hosts := make([]string, n)
	for k := range hosts {
		hosts[k] = "127.0.0.1"
	}
	if o.Netns {
		var err error
		if c.net, err = newTopology(t, n); err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
		hosts = c.net.hosts
	}
	var addrs []string
	for k := range n {
		i := &Instance{t: t, kind: MySQL, bins: bins}
		dir, err := os.MkdirTemp("", dirPrefix)
		if err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
		i.dir, i.data, i.log = dir, filepath.Join(dir, "data"), filepath.Join(dir, "server.log")
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("dbinstance: galera node %d log (%s), last lines:\n%s", k, i.log, i.LogTail(30))
			}
			_ = os.RemoveAll(dir)
		})
		if os.Geteuid() == 0 {
			if i.cred, err = lookupCred("mysql"); err != nil {
				t.Fatalf("dbinstance: %v", err)
			}
			if err := os.Chown(dir, int(i.cred.Uid), int(i.cred.Gid)); err != nil {
				t.Fatalf("dbinstance: %v", err)
			}
		}
		ports := make([]int, 4)
		for p := range ports {
			if ports[p], err = freePort(); err != nil {
				t.Fatalf("dbinstance: %v", err)
			}
		}
		i.port = ports[0]
		i.galera = &galeraNode{index: k, host: hosts[k], options: o.providerOptions(), gcomm: ports[1], ist: ports[2], sst: ports[3],
			bootstrap: k == 0, socketFile: filepath.Join(dir, "sock")}
		if o.Netns {
			i.host, i.netns = hosts[k], c.net.netns[k]
		}
		addrs = append(addrs, net.JoinHostPort(hosts[k], strconv.Itoa(ports[1])))
		c.Nodes = append(c.Nodes, i)
	}
	// Killed rather than shut down: nothing in a throwaway cluster needs a
	// clean shutdown, and a last node's shutdown can take seconds. Registered
	// after the directories' removal, so it runs first.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, i := range c.Nodes {
			wg.Go(i.Crash)
		}
		wg.Wait()
	})

	// mariadb-install-db for every node at once; the joiners' data is
	// replaced by the state transfer, but mariadbd needs a data directory.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for k, i := range c.Nodes {
		i.galera.cluster = "gcomm://" + strings.Join(addrs, ",")
		wg.Go(func() {
			if errs[k] = i.initdb(); errs[k] == nil {
				// No init file: the bootstrap node creates the account once
				// it is Synced (ready), and the joiners receive it.
				errs[k] = os.WriteFile(filepath.Join(i.dir, "init.sql"), nil, 0o644)
			}
		})
	}
	wg.Wait()
	for k, err := range errs {
		if err != nil {
			t.Fatalf("dbinstance: initialise galera node %d: %v", k, err)
		}
	}
	// One node at a time: two joiners asking the same donor for a state
	// transfer at once would wait for each other.
	for k, i := range c.Nodes {
		t0 := time.Now()
		if err := i.Start(); err != nil {
			t.Fatalf("dbinstance: start galera node %d: %v\n%s", k, err, i.LogTail(30))
		}
		t.Logf("dbinstance: galera node %d Synced after %v", k, time.Since(t0).Round(10*time.Millisecond))
	}
	c.Started = time.Since(began)
	return c
}

// DSN returns a sqldlm DSN URL for the database "test" on node k.
func (c *Cluster) DSN(k int) string { return c.Nodes[k].DSN() }

// RSS returns the resident memory of the node's mariadbd, 0 when it is down.
func (i *Instance) RSS() int64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cmd == nil {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(i.cmd.Process.Pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
