//go:build linux

package integration_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/faultproxy"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// The randomized fault test on a 3-node MariaDB Galera cluster (issue 15):
// the workload, checkers and client faults of TestJepsen, with the
// cluster's own faults added, on one cluster whose nodes run in network
// namespaces (dbinstance.GaleraOptions.Netns), each case in a database of
// its own:
//
//   - node-crash: kill -9 of a node; it is restarted after the hold and
//     rejoins by IST.
//   - node-partition: a node is cut off from the other two (blackhole
//     routes in the namespaces; the test process still reaches it). It must
//     go non-Primary and refuse: a client opened on it during the partition
//     must be granted nothing (checked, an error if it is). The partition
//     heals after the hold and the node rejoins.
//   - cluster-crash: kill -9 of one node, then, 4-5 s later (the survivors
//     having gone on committing), of the other two; recovery as an operator
//     does it: mariadbd --wsrep-recover on each, bootstrap from the highest
//     seqno (safe_to_bootstrap), the others join.
//
// Each of the three happens in every run (first, in a seeded order, every
// other fault); the client faults are TestJepsen's but the server-side
// session kill (the parent's own sessions are not told apart from the
// clients' once the writer changes).
//
// Cases:
//
//   - single-writer: every client reaches the cluster through its fault
//     proxy, which points at one node, the writer, like HAProxy with one
//     active server and backups. When the writer is killed or, once it is
//     non-Primary, partitioned, the proxies switch to another node and end
//     their open connections (HAProxy's health check with
//     on-marked-down shutdown-sessions). Must show 0 violations.
//   - recovery-mutant: bootstraps the node killed first, whatever its
//     seqno, and makes the others take a full state transfer: the
//     transactions committed after that node died are lost. The checkers
//     must see it (journal: acknowledged fenced writes missing). This
//     shows the cluster run can see lost writes; it uses cluster-crash only.
//   - multi-writer: the clients spread over the three nodes (client i on
//     node i mod 3). Fence does not hold there today (finding G3 of the
//     cluster report: its shared row lock is not certified), so this case
//     runs only with SQLDLM_JEPSEN_GALERA_MULTI=1; switch it on by default
//     once sqldlm_fence writes the hold row on MySQL. It is no detector of
//     G3: a fenced commit must be certified in the milliseconds in which
//     another node's takeover is, which the random workload seldom makes
//     (one 84 s run: 135 grants, 195 fenced commits, 0 violations); G3's
//     own reproduction is the guard.
//
// SQLDLM_JEPSEN_SEED replays a run (each case prints its seed);
// SQLDLM_JEPSEN_TIME, _HOLD, _GAP and _FAULTS work as in TestJepsen (the
// Galera defaults: 75s, holds of 0.2-1.5 TTL; the TTL is 6s). It skips with
// -short, and skips without galera-4 or network namespaces unless
// SQLDLM_TEST_REQUIRE names galera.
func TestGaleraJepsen(t *testing.T) {
	if testing.Short() {
		t.Skip("the randomized fault test on a Galera cluster takes about 3 minutes; it runs without -short")
	}
	began := time.Now()
	c := dbinstance.StartGaleraWith(t, dbinstance.GaleraOptions{Nodes: 3, Netns: true, ProviderOptions: galeraProviderOptions})
	t.Logf("galera: 3 nodes in network namespaces Synced in %s", c.Started.Round(10*time.Millisecond))
	t.Run("single-writer", func(t *testing.T) {
		newJepsenRun(t, testdb.MySQL, newJepsenCluster(t, c, "single-writer", false)).run()
	})
	t.Run("recovery-mutant", func(t *testing.T) {
		cl := newJepsenCluster(t, c, "recovery-mutant", false)
		// One whole-cluster crash fits in 15s of workload.
		cl.recoverFrom, cl.faults, cl.duration = 0, []string{"cluster-crash"}, 15*time.Second
		r := newJepsenRun(t, testdb.MySQL, cl)
		r.mutant = true
		r.run()
		summary := r.mutantSummary()
		t.Logf("recovery-mutant: violations per checker %v", summary)
		require.Positive(t, summary["journal"], "the journal checker saw no acknowledged write lost by the recovery from the wrong node")
	})
	t.Run("multi-writer", func(t *testing.T) {
		if os.Getenv("SQLDLM_JEPSEN_GALERA_MULTI") != "1" {
			t.Skip("Fence does not hold in multi-writer Galera yet (finding G3); SQLDLM_JEPSEN_GALERA_MULTI=1 runs this case")
		}
		newJepsenRun(t, testdb.MySQL, newJepsenCluster(t, c, "multi-writer", true)).run()
	})
	t.Logf("galera: %s in all, cluster start included", time.Since(began).Round(time.Second))
}

// Galera settings of the test cluster: commits stall for about
// evs.suspect_timeout + 1 s when a node dies (finding G5), 3 s here instead
// of 6 s, so that a 6 s TTL (2 x (suspect timeout + 1 s), the rule New
// warns by) outlives the stall and the run fits more faults.
const (
	galeraProviderOptions = "evs.suspect_timeout=PT2S;evs.keepalive_period=PT0.5S"
	galeraTTL             = 6 * time.Second
	galeraTime            = 75 * time.Second
)

var galeraHold = [2]float64{0.2, 1.5}

func (cl *jepsenCluster) profile() jepsenProfile {
	return jepsenProfile{label: "galera-" + cl.name, ttl: galeraTTL, duration: cl.duration, hold: galeraHold,
		kinds: []string{"node-crash", "node-partition", "cluster-crash"}, without: cl.without, faults: cl.faults}
}

// jepsenCluster is one case's view of the cluster: which node each client
// slot reaches, the writer, and the cluster faults.
type jepsenCluster struct {
	t      *testing.T
	c      *dbinstance.Cluster
	name   string
	spread bool   // multi-writer: slot i on node i mod 3; else all on the writer
	dbName string // this case's database
	// recoverFrom < 0: recovery bootstraps the highest seqno; else this
	// node, killed first (the recovery mutant).
	recoverFrom int
	faults      []string // the faults, instead of the default
	duration    time.Duration
	without     []string // faults the default leaves out

	mu      sync.Mutex
	writer  int                 // the node the proxies point at (single-writer)
	proxies []*faultproxy.Proxy // the parent's, then the slots'
	slots   []int               // each slot's node (spread)
}

func newJepsenCluster(t *testing.T, c *dbinstance.Cluster, name string, spread bool) *jepsenCluster {
	cl := &jepsenCluster{t: t, c: c, name: name, spread: spread, recoverFrom: -1, without: []string{"session"}, duration: galeraTime,
		dbName: "jepsen_" + strings.ReplaceAll(name, "-", "_")}
	// The writer is a node that is up and Primary (a previous case may
	// have moved it).
	cl.writer = cl.liveNode(-1)
	return cl
}

// liveNode returns the first node other than not that is Synced in a
// Primary component, or 0.
func (cl *jepsenCluster) liveNode(not int) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for k := range cl.c.Nodes {
		if k == not {
			continue
		}
		if s, err := cl.c.State(ctx, k); err == nil && s.Status == "Primary" && s.State == "Synced" {
			return k
		}
	}
	return 0
}

// setupDSN creates the case's database and returns a DSN for it through
// the parent's own proxy, which follows the writer.
func (cl *jepsenCluster) setupDSN(t *testing.T) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, _, err := dsn.Open(ctx, cl.c.DSN(cl.writer))
	require.NoError(t, err)
	defer db.Close()
	// The name is a constant of this file, not input.
	_, err = db.ExecContext(ctx, "CREATE DATABASE "+cl.dbName)
	require.NoError(t, err)
	p, err := faultproxy.New(cl.c.Nodes[cl.writer].Addr())
	require.NoError(t, err)
	t.Cleanup(p.Close)
	cl.mu.Lock()
	cl.proxies = append(cl.proxies, p)
	cl.mu.Unlock()
	return cl.dsnVia(p.Addr())
}

func (cl *jepsenCluster) dsnVia(host string) string {
	u, err := url.Parse(cl.c.DSN(0))
	require.NoError(cl.t, err)
	u.Host, u.Path = host, "/"+cl.dbName
	return u.String()
}

// slotTarget is the node address slot i's proxy starts with; the proxy is
// then registered by addSlot.
func (cl *jepsenCluster) slotTarget(i int) string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	k := cl.writer
	if cl.spread {
		k = i % len(cl.c.Nodes)
	}
	cl.slots = append(cl.slots, k)
	return cl.c.Nodes[k].Addr()
}

// failover points every proxy of a single-writer case at node k and ends
// the proxies' open connections.
func (cl *jepsenCluster) failover(k int, proxies []*faultproxy.Proxy) string {
	cl.mu.Lock()
	cl.writer = k
	cl.mu.Unlock()
	for _, p := range proxies {
		p.Retarget(cl.c.Nodes[k].Addr())
		p.ResetAll()
	}
	return fmt.Sprintf("; the writer is now n%d", k)
}

func (cl *jepsenCluster) allProxies(r *jepsenRun) []*faultproxy.Proxy {
	ps := slices.Clone(cl.proxies)
	for _, s := range r.slots {
		ps = append(ps, s.proxy)
	}
	return ps
}

// inject applies one cluster fault and heals it: when it returns, every
// node is Synced in a Primary component of three.
func (cl *jepsenCluster) inject(r *jepsenRun, kind string, hold time.Duration) string {
	n := len(cl.c.Nodes)
	proxies := cl.allProxies(r)
	switch kind {
	case "node-crash":
		k := cl.victim(r)
		cl.c.Nodes[k].Crash()
		desc := fmt.Sprintf("killed n%d", k)
		if !cl.spread && k == cl.writer {
			desc += cl.failover((k+1)%n, proxies)
		}
		time.Sleep(hold) // the fault's duration
		began := time.Now()
		if err := cl.c.Nodes[k].Start(); err != nil {
			cl.t.Errorf("galera: restarting n%d: %v", k, err)
		}
		return desc + fmt.Sprintf("; restarted it after %s, Synced %s later", hold.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	case "node-partition":
		k := cl.victim(r)
		began := time.Now()
		if err := cl.c.Isolate(k); err != nil {
			cl.t.Errorf("galera: isolating n%d: %v", k, err)
			return "isolation failed"
		}
		desc := fmt.Sprintf("isolated n%d", k)
		if _, err := cl.c.WaitState(k, 30*time.Second, func(s dbinstance.NodeState) bool { return s.Status != "Primary" }); err != nil {
			cl.t.Errorf("galera: the isolated n%d stayed Primary: %v", k, err)
		} else {
			desc += fmt.Sprintf(", non-Primary after %s", time.Since(began).Round(time.Millisecond))
			desc += cl.minorityRefuses(k)
		}
		if !cl.spread && k == cl.writer {
			desc += cl.failover((k+1)%n, proxies)
		}
		time.Sleep(hold) // the fault's duration
		if err := cl.c.Heal(); err != nil {
			cl.t.Errorf("galera: healing: %v", err)
		}
		began = time.Now()
		if _, err := cl.c.WaitState(k, 90*time.Second, dbinstance.Synced(n)); err != nil {
			cl.t.Errorf("galera: n%d after the partition healed: %v", k, err)
		}
		return desc + fmt.Sprintf("; healed after %s, Synced %s later", hold.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	case "cluster-crash":
		order := r.rng.Perm(n)
		if cl.recoverFrom >= 0 {
			// The mutant's node dies first, so that it misses the others'
			// last commits.
			i := slices.Index(order, cl.recoverFrom)
			order[0], order[i] = order[i], order[0]
		}
		first := order[0]
		crashed := time.Now()
		cl.c.Nodes[first].Crash()
		desc := fmt.Sprintf("killed n%d", first)
		if !cl.spread && first == cl.writer {
			desc += cl.failover(order[1], proxies)
		}
		gap := time.Duration((4 + r.rng.Float64()) * float64(time.Second))
		time.Sleep(gap) // the survivors commit on without it: the fault's schedule
		var wg sync.WaitGroup
		for _, k := range order[1:] {
			wg.Go(cl.c.Nodes[k].Crash)
		}
		wg.Wait()
		desc += fmt.Sprintf(", then the others %s later", gap.Round(time.Millisecond))
		rec, err := cl.c.Recover(cl.recoverFrom)
		if err != nil {
			cl.t.Errorf("galera: recovering the cluster: %v", err)
			return desc + "; recovery failed"
		}
		desc += fmt.Sprintf("; recovered seqnos %v, bootstrapped n%d, all Synced after %s", rec.Seqnos, rec.Bootstrap, rec.Took.Round(time.Millisecond))
		// Until now nothing could be released: the checkers' bounds on how
		// long a hold outlives its Release grow by this outage.
		r.noteOutage(time.Since(crashed))
		if !cl.spread {
			desc += cl.failover(rec.Bootstrap, proxies)
		}
		return desc
	}
	cl.t.Fatalf("unknown cluster fault %q", kind)
	return ""
}

// victim picks the node a node fault hits: in a single-writer case the
// writer two times in three (its clients see the fault), else any node.
func (cl *jepsenCluster) victim(r *jepsenRun) int {
	if !cl.spread && r.rng.Float64() < 2.0/3 {
		return cl.writer
	}
	return r.rng.IntN(len(cl.c.Nodes))
}

// minorityRefuses checks that a client on the isolated node k is granted
// nothing: a fresh client there fails at New or at TryLock.
func (cl *jepsenCluster) minorityRefuses(k int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, err := url.Parse(cl.c.DSN(k))
	require.NoError(cl.t, err)
	u.Path = "/" + cl.dbName
	db, _, err := dsn.Open(ctx, u.String())
	if err != nil {
		return fmt.Sprintf("; a client on it could not connect (%v)", err)
	}
	defer db.Close()
	c, err := sqldlm.New(db, sqldlm.Config{TTL: galeraTTL, ReapInterval: jepsenReap, Owner: "jepsen-minority", ConnectTimeout: 5 * time.Second})
	if err != nil {
		return fmt.Sprintf("; a client on it was refused at New (%s)", shortErr(err))
	}
	defer c.Close()
	l, err := c.TryLock(ctx, jepsenName(0), sqldlm.Exclusive)
	if err == nil {
		cl.t.Errorf("galera: the isolated, non-Primary n%d granted %q (token %d) to a client on it", k, l.Name(), l.Token())
		_ = l.Release(ctx)
		return "; A CLIENT ON IT WAS GRANTED A LOCK"
	}
	return fmt.Sprintf("; a client on it was refused at TryLock (%s)", shortErr(err))
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

// healAll ends any partition and brings back any node that is down.
func (cl *jepsenCluster) healAll(r *jepsenRun) {
	if err := cl.c.Heal(); err != nil {
		cl.t.Errorf("galera: healing: %v", err)
	}
	down := 0
	for _, i := range cl.c.Nodes {
		if !i.Running() {
			down++
		}
	}
	if down == len(cl.c.Nodes) {
		rec, err := cl.c.Recover(-1)
		if err != nil {
			cl.t.Errorf("galera: recovering the cluster: %v", err)
			return
		}
		if !cl.spread {
			cl.failover(rec.Bootstrap, cl.allProxies(r))
		}
	}
	for k, i := range cl.c.Nodes {
		if !i.Running() {
			if err := i.Start(); err != nil {
				cl.t.Errorf("galera: restarting n%d: %v", k, err)
			}
		}
		if _, err := cl.c.WaitState(k, 90*time.Second, dbinstance.Synced(len(cl.c.Nodes))); err != nil {
			cl.t.Errorf("galera: %v", err)
		}
	}
}
