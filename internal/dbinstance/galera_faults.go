//go:build linux

package dbinstance

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// GaleraOptions configure StartGaleraWith.
type GaleraOptions struct {
	Nodes int
	// Netns puts every node in a network namespace of its own (netns.go),
	// so that Isolate can partition it from the others. It needs root and
	// the ip command; without them the cluster is skipped (a failure with
	// SQLDLM_TEST_REQUIRE naming galera).
	Netns bool
	// ProviderOptions are added to the wsrep provider options, e.g.
	// "evs.suspect_timeout=PT2S;evs.keepalive_period=PT0.5S" (the keep-alive
	// period must be under a third of the suspect timeout).
	ProviderOptions string
}

func (o GaleraOptions) providerOptions() string {
	if o.ProviderOptions == "" {
		return ""
	}
	return ";" + o.ProviderOptions
}

// Isolate partitions node k from the other nodes, both ways (packets are
// dropped); clients in the test process still reach it. It needs
// GaleraOptions.Netns. Heal undoes it.
func (c *Cluster) Isolate(k int) error {
	if c.net == nil {
		return errors.New("dbinstance: Isolate needs a cluster started with GaleraOptions.Netns")
	}
	return c.net.isolate(k)
}

// Heal ends every partition Isolate made.
func (c *Cluster) Heal() error {
	if c.net == nil {
		return nil
	}
	return c.net.heal()
}

// NodeState is what a node says of itself.
type NodeState struct {
	Status string // wsrep_cluster_status: Primary, non-Primary, Disconnected
	State  string // wsrep_local_state_comment: Synced, Donor/Desynced, Joining, ...
	Size   int    // wsrep_cluster_size
}

// State asks node k (through its socket) for its cluster status.
func (c *Cluster) State(ctx context.Context, k int) (NodeState, error) {
	db, err := sql.Open("mysql", "root@unix("+c.Nodes[k].galera.socketFile+")/mysql")
	if err != nil {
		return NodeState{}, err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SHOW GLOBAL STATUS WHERE Variable_name IN
		('wsrep_cluster_status', 'wsrep_local_state_comment', 'wsrep_cluster_size')`)
	if err != nil {
		return NodeState{}, err
	}
	defer rows.Close()
	var s NodeState
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return NodeState{}, err
		}
		switch name {
		case "wsrep_cluster_status":
			s.Status = value
		case "wsrep_local_state_comment":
			s.State = value
		case "wsrep_cluster_size":
			s.Size, _ = strconv.Atoi(value)
		}
	}
	return s, rows.Err()
}

// WaitState polls node k until ok accepts its state or timeout passes.
func (c *Cluster) WaitState(k int, timeout time.Duration, ok func(NodeState) bool) (NodeState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		s, err := c.State(pctx, k)
		pcancel()
		if err == nil && ok(s) {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("dbinstance: galera node %d: last state %+v (%v) after %v", k, s, err, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Synced is a WaitState condition: the node is Synced in a Primary
// component of size nodes.
func Synced(nodes int) func(NodeState) bool {
	return func(s NodeState) bool { return s.Status == "Primary" && s.State == "Synced" && s.Size == nodes }
}

// Recovery says how Recover brought a cluster back.
type Recovery struct {
	Seqnos    []int64 // each node's recovered position (-1: none)
	Bootstrap int     // the node that bootstrapped the new cluster
	Took      time.Duration
}

var recoveredPosition = regexp.MustCompile(`Recovered position: ?([0-9a-f-]+):(-?[0-9]+)`)

// Recover brings back a cluster whose nodes are all down (after Crash of
// every node), as an operator does after a power loss: each node's last
// committed position is read with mariadbd --wsrep-recover, the node with
// the highest seqno is marked safe_to_bootstrap in its grastate.dat and
// started with --wsrep-new-cluster, and the others join it one at a time.
//
// from >= 0 bootstraps node from whatever its seqno, and makes the others
// take a full state transfer (their grastate.dat removed, as the error
// message of a node whose state diverged tells an operator to do): the
// mistake that loses the transactions the bootstrapped node had not
// committed. Tests use it to show that their checkers see lost writes.
func (c *Cluster) Recover(from int) (Recovery, error) {
	began := time.Now()
	r := Recovery{Seqnos: make([]int64, len(c.Nodes)), Bootstrap: from}
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for k, i := range c.Nodes {
		if i.Running() {
			return r, fmt.Errorf("dbinstance: Recover: galera node %d is running", k)
		}
		wg.Go(func() { r.Seqnos[k], errs[k] = i.recoverPosition() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return r, err
	}
	if from < 0 {
		r.Bootstrap = 0
		for k, s := range r.Seqnos {
			if s > r.Seqnos[r.Bootstrap] {
				r.Bootstrap = k
			}
		}
	}
	boot := c.Nodes[r.Bootstrap]
	if err := setSafeToBootstrap(boot.data); err != nil {
		return r, err
	}
	boot.galera.bootstrap = true
	if err := boot.Start(); err != nil {
		return r, fmt.Errorf("dbinstance: bootstrap galera node %d: %w\n%s", r.Bootstrap, err, boot.LogTail(20))
	}
	for k, i := range c.Nodes {
		if k == r.Bootstrap {
			continue
		}
		if from >= 0 {
			if err := os.Remove(filepath.Join(i.data, "grastate.dat")); err != nil && !errors.Is(err, os.ErrNotExist) {
				return r, err
			}
		}
		if err := i.Start(); err != nil {
			return r, fmt.Errorf("dbinstance: rejoin galera node %d: %w\n%s", k, err, i.LogTail(20))
		}
	}
	r.Took = time.Since(began)
	return r, nil
}

// recoverPosition runs mariadbd --wsrep-recover on the node's data
// directory and returns the recovered seqno.
func (i *Instance) recoverPosition() (int64, error) {
	cmd := i.serverCommand()
	cmd.Args = append(cmd.Args, "--wsrep-recover", "--skip-networking",
		"--socket="+filepath.Join(i.dir, "sock.recover"), "--pid-file="+filepath.Join(i.dir, "recover.pid"))
	out, err := cmd.CombinedOutput()
	m := recoveredPosition.FindAllStringSubmatch(string(out), -1)
	if len(m) == 0 {
		return 0, fmt.Errorf("dbinstance: mariadbd --wsrep-recover in %s printed no position (%v):\n%s", i.data, err, tail(string(out), 20))
	}
	return strconv.ParseInt(m[len(m)-1][2], 10, 64)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// setSafeToBootstrap marks the node whose data directory is data as the
// one to bootstrap from.
func setSafeToBootstrap(data string) error {
	path := filepath.Join(data, "grastate.dat")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := strings.Replace(string(b), "safe_to_bootstrap: 0", "safe_to_bootstrap: 1", 1)
	return os.WriteFile(path, []byte(s), 0o644) // an existing file keeps its owner
}
