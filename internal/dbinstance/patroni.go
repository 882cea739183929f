//go:build linux

package dbinstance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/dsn"
)

// PatroniKind is the SQLDLM_TEST_REQUIRE name that makes a Patroni cluster
// that cannot start a failure instead of a skip.
const PatroniKind = "patroni"

// PatroniOptions configure StartPatroni.
type PatroniOptions struct {
	// Nodes is the number of Patroni-managed PostgreSQL nodes (default 2).
	Nodes int
	// Sync turns Patroni's synchronous_mode on: a commit on the leader
	// waits for one synchronous standby, and Patroni promotes only that
	// standby.
	Sync bool
	// TTL, LoopWait and RetryTimeout are Patroni's leader key TTL, HA loop
	// interval and DCS/PostgreSQL retry timeout (defaults 10 s, 1 s, 4 s;
	// Patroni's own are 30, 10 and 10). A leader that dies without
	// releasing its key is replaced after at most TTL + LoopWait plus the
	// promotion.
	TTL, LoopWait, RetryTimeout time.Duration
}

// Patroni is a throwaway Patroni cluster: a single-member etcd and n
// PostgreSQL nodes, each run by its own Patroni process, on loopback ports,
// with use_pg_rewind on. Node 0 bootstraps the cluster; the others clone
// it. The database "test" exists and the role postgres connects without a
// password.
type Patroni struct {
	Nodes []*PatroniNode
	// Started is how long StartPatroni took, from nothing to a leader and
	// every other node a running replica.
	Started time.Duration

	t    testing.TB
	dir  string
	etcd *exec.Cmd
}

// PatroniNode is one member: a Patroni process and the PostgreSQL it
// starts (which Patroni detaches from itself, as in production).
type PatroniNode struct {
	Name     string
	dir      string
	data     string
	config   string
	log      string
	pgPort   int
	restPort int
	cred     *syscall.Credential

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// StartPatroni starts etcd and the Patroni nodes and waits until there is a
// leader and every other node is a running replica (with Sync, one of them
// the synchronous standby). t.Cleanup kills everything and removes the
// directory. It skips t when patroni, etcd or PostgreSQL is not installed,
// unless SQLDLM_TEST_REQUIRE names "patroni".
func StartPatroni(t testing.TB, o PatroniOptions) *Patroni {
	t.Helper()
	clusterStage(t)
	if o.Nodes <= 0 {
		o.Nodes = 2
	}
	if o.TTL <= 0 {
		o.TTL = 10 * time.Second
	}
	if o.LoopWait <= 0 {
		o.LoopWait = time.Second
	}
	if o.RetryTimeout <= 0 {
		o.RetryTimeout = 4 * time.Second
	}
	bins, why := findBinaries(Postgres)
	_, err1 := lookPath("patroni", "/usr/bin/patroni")
	etcdBin, err2 := lookPath("etcd", "/usr/bin/etcd")
	if why == "" && (err1 != nil || err2 != nil) {
		why = "patroni or etcd is not installed (apt-get install patroni etcd-server)"
	}
	if why != "" {
		msg := "dbinstance: no throwaway Patroni cluster: " + why
		if required(PatroniKind) {
			t.Fatalf("%s (SQLDLM_TEST_REQUIRE=%s makes this a failure)", msg, os.Getenv("SQLDLM_TEST_REQUIRE"))
		}
		t.Skip(msg)
	}
	sweepOnce.Do(sweepStale)
	began := time.Now()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		if cred, err = lookupCred("postgres"); err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
	}
	p := &Patroni{t: t, dir: dir}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			for _, n := range p.Nodes {
				t.Logf("dbinstance: Patroni %s log (%s), last lines:\n%s", n.Name, n.log, n.LogTail(30))
			}
		}
		_ = os.RemoveAll(dir)
	})
	clusterWatchdog(dir)

	etcdAddr := p.startEtcd(etcdBin)
	binDir := filepath.Dir(bins.server)
	scope := "sqldlm-" + filepath.Base(dir)
	for k := range o.Nodes {
		n := &PatroniNode{Name: "node" + strconv.Itoa(k), cred: cred}
		n.dir = filepath.Join(dir, n.Name)
		n.data = filepath.Join(n.dir, "data")
		n.config = filepath.Join(n.dir, "patroni.yml")
		n.log = filepath.Join(n.dir, "patroni.log")
		if n.pgPort, err = freePort(); err != nil {
			t.Fatal(err)
		}
		if n.restPort, err = freePort(); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(n.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := patroniConfig(scope, n, etcdAddr, binDir, o)
		if err := writeOwned(n.config, cfg, cred); err != nil {
			t.Fatal(err)
		}
		if cred != nil {
			if err := os.Chown(n.dir, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatal(err)
			}
		}
		p.Nodes = append(p.Nodes, n)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	// Node 0 first, so that it is the one that bootstraps.
	if err := p.Nodes[0].Start(); err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	leader, err := p.WaitLeader(ctx)
	if err != nil {
		t.Fatalf("dbinstance: Patroni did not bootstrap: %v\n%s", err, p.Nodes[0].LogTail(30))
	}
	db, _, err := dsn.Open(ctx, p.Nodes[leader].adminDSN("postgres"))
	if err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	_, err = db.ExecContext(ctx, "CREATE DATABASE test")
	db.Close()
	if err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	for _, n := range p.Nodes[1:] {
		if err := n.Start(); err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
	}
	if err := p.WaitReplicas(ctx, o.Sync); err != nil {
		t.Fatalf("dbinstance: %v", err)
	}

	p.Started = time.Since(began)
	return p
}

func patroniConfig(scope string, n *PatroniNode, etcdAddr, binDir string, o PatroniOptions) string {
	secs := func(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }
	return fmt.Sprintf(`scope: %[1]s
name: %[2]s
log:
  level: INFO
restapi:
  listen: 127.0.0.1:%[3]d
  connect_address: 127.0.0.1:%[3]d
etcd3:
  hosts: %[4]s
bootstrap:
  dcs:
    ttl: %[5]d
    loop_wait: %[6]d
    retry_timeout: %[7]d
    maximum_lag_on_failover: 1048576
    synchronous_mode: %[8]t
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 5
        max_replication_slots: 5
        wal_keep_size: 64MB
        fsync: "on"
        synchronous_commit: "on"
        wal_sender_timeout: 5s
        wal_receiver_timeout: 5s
        max_connections: 100
        shared_buffers: 16MB
        TimeZone: UTC
  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  listen: 127.0.0.1:%[9]d
  connect_address: 127.0.0.1:%[9]d
  data_dir: %[10]s
  bin_dir: %[11]s
  pgpass: %[12]s/pgpass
  authentication:
    superuser:
      username: postgres
      password: postgres
    replication:
      username: replicator
      password: replicator
  basebackup:
    - checkpoint: fast
  parameters:
    unix_socket_directories: %[12]s
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
`, scope, n.Name, n.restPort, etcdAddr, secs(o.TTL), secs(o.LoopWait), secs(o.RetryTimeout), o.Sync,
		n.pgPort, n.data, binDir, n.dir)
}

// startEtcd starts the single-member etcd on free loopback ports and
// returns its client address.
func (p *Patroni) startEtcd(bin string) string {
	t := p.t
	data := filepath.Join(p.dir, "etcd")
	logPath := filepath.Join(p.dir, "etcd.log")
	for attempt := 0; ; attempt++ {
		cport, err1 := freePort()
		pport, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		client := "127.0.0.1:" + strconv.Itoa(cport)
		peer := "http://127.0.0.1:" + strconv.Itoa(pport)
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--name", "e0", "--data-dir", data,
			"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", "e0="+peer, "--initial-cluster-state", "new")
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatalf("dbinstance: start etcd: %v", err)
		}
		logf.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		p.etcd = cmd
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = waitHTTP(ctx, "http://"+client+"/health", done)
		cancel()
		if err == nil {
			return client
		}
		_ = cmd.Process.Kill()
		<-done
		p.etcd = nil
		out, _ := os.ReadFile(logPath)
		if attempt == 2 || !strings.Contains(string(out), "in use") {
			t.Fatalf("dbinstance: etcd did not start: %v\n%s", err, out)
		}
		_ = os.RemoveAll(data)
	}
}

// waitHTTP waits until url answers 200, or exited closes, or ctx ends.
func waitHTTP(ctx context.Context, url string, exited <-chan struct{}) error {
	for {
		code, _, err := httpGet(ctx, url)
		if err == nil && code == http.StatusOK {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%s answered %d", url, code)
		}
		select {
		case <-exited:
			return fmt.Errorf("exited: %v", err)
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func httpGet(ctx context.Context, url string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// clusterWatchdog makes sure every process of the cluster dies with the
// test process, should Pdeathsig not do it: Patroni starts PostgreSQL in a
// session of its own, so the postmaster outlives a killed test (and a
// killed Patroni). A shell polls once a second while the test process
// lives and the directory exists; once the test process is gone it kills
// every process whose command line names the directory (etcd's data
// directory, Patroni's configuration file, the postmaster's -D). It exits
// by itself once the directory is removed.
func clusterWatchdog(dir string) {
	script := `while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
[ -d "$2" ] || exit 0
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  [ "$pid" = "$$" ] && continue
  c=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)
  case "$c" in *"$2"*) kill -9 "$pid" 2>/dev/null;; esac
done`
	cmd := exec.Command("/bin/sh", "-c", script, "sqldlm-inst-watchdog", strconv.Itoa(os.Getpid()), dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cmd.Start() == nil {
		go func() { _ = cmd.Wait() }()
	}
}

// kill kills every node and etcd.
func (p *Patroni) kill() {
	for _, n := range p.Nodes {
		n.Crash()
	}
	if p.etcd != nil && p.etcd.Process != nil {
		_ = p.etcd.Process.Kill()
	}
}

// Start starts the node's Patroni (after Crash or KillPatroni), which
// starts its PostgreSQL, or joins it to the cluster as a replica, with
// pg_rewind if it has diverged. It does not wait for that: see
// WaitReplicas.
func (n *PatroniNode) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("dbinstance: Patroni %s is already running", n.Name)
	}
	logf, err := os.OpenFile(n.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	bin, err := lookPath("patroni", "/usr/bin/patroni")
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, n.config)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "TZ=UTC", "HOME=" + n.dir}
	cmd.Dir = n.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: n.cred}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start Patroni %s: %w", n.Name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	n.cmd, n.done = cmd, done
	// Patroni binds its REST API once it has read the cluster from etcd;
	// on an idle machine that takes about 2 s. Under the cluster stage's
	// load (three Galera clusters starting beside it) a clean-clone CI
	// run saw no answer, and not one log line, within 30 s, the Python
	// process still running: the wait is as long as the bootstrap's.
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := waitHTTP(ctx, n.restURL("/liveness"), done); err != nil {
		return fmt.Errorf("Patroni %s's REST API does not answer after %s: %v\n%s",
			n.Name, time.Since(began).Round(time.Millisecond), err, n.LogTail(20))
	}
	return nil
}

// KillPatroni kills the node's Patroni with SIGKILL and leaves its
// PostgreSQL running, as an OOM kill of Patroni would. Without Patroni's
// watchdog (/dev/watchdog) a primary left so keeps taking writes from the
// clients connected to it directly while another node is promoted.
func (n *PatroniNode) KillPatroni() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.done
	n.cmd, n.done = nil, nil
}

// KillPostgres kills the node's postmaster and its children with SIGKILL
// and leaves Patroni running, which restarts it (or, on the leader with
// primary_start_timeout passed, fails over).
func (n *PatroniNode) KillPostgres() {
	pid, ok := n.postmasterPID()
	if !ok {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGSTOP) // keep its children its own while they are listed
	kids := childrenOf(pid)
	for _, c := range kids {
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range append(kids, pid) {
		for alive(c) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Crash kills the node's Patroni and its PostgreSQL with SIGKILL, as a
// power loss of the machine would. Start brings it back.
func (n *PatroniNode) Crash() {
	n.KillPatroni()
	n.KillPostgres()
}

// postmasterPID reads the postmaster's PID from postmaster.pid, if the
// process still runs with this node's data directory.
func (n *PatroniNode) postmasterPID() (int, bool) {
	b, err := os.ReadFile(filepath.Join(n.data, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || !alive(pid) {
		return 0, false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !strings.Contains(string(cmdline), n.data) {
		return 0, false
	}
	return pid, true
}

// Addr is the node's PostgreSQL host:port.
func (n *PatroniNode) Addr() string { return "127.0.0.1:" + strconv.Itoa(n.pgPort) }

// RESTPort is the port of the node's Patroni REST API (127.0.0.1), which
// answers GET /primary with 200 on the leader only.
func (n *PatroniNode) RESTPort() int { return n.restPort }

// DSN is a DSN for the database "test" on this node.
func (n *PatroniNode) DSN() string { return n.adminDSN("test") }

func (n *PatroniNode) adminDSN(db string) string {
	return "postgres://postgres@" + n.Addr() + "/" + db + "?sslmode=disable&connect_timeout=5"
}

func (n *PatroniNode) restURL(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(n.restPort) + path
}

// Log returns the node's Patroni log (its PostgreSQL's too).
func (n *PatroniNode) Log() string {
	b, _ := os.ReadFile(n.log)
	return string(b)
}

// LogTail returns the last lines of the node's log.
func (n *PatroniNode) LogTail(lines int) string {
	s := strings.Split(strings.TrimRight(n.Log(), "\n"), "\n")
	if len(s) > lines {
		s = s[len(s)-lines:]
	}
	return strings.Join(s, "\n")
}

// DSN is a DSN for the database "test" on node k.
func (p *Patroni) DSN(k int) string { return p.Nodes[k].DSN() }

// Leader returns the index of the node whose REST API answers GET /primary
// with 200 (it holds the leader key and runs as primary), or -1.
func (p *Patroni) Leader(ctx context.Context) int {
	for k, n := range p.Nodes {
		if code, _, err := httpGet(ctx, n.restURL("/primary")); err == nil && code == http.StatusOK {
			return k
		}
	}
	return -1
}

// WaitLeader waits until a node is the leader and returns its index.
func (p *Patroni) WaitLeader(ctx context.Context) (int, error) {
	for {
		if k := p.Leader(ctx); k >= 0 {
			return k, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no Patroni leader: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PatroniMember is a member in Patroni's GET /cluster.
type PatroniMember struct {
	Name     string `json:"name"`
	Role     string `json:"role"`  // leader, replica, sync_standby
	State    string `json:"state"` // running, starting, stopped, ...
	Timeline int    `json:"timeline"`
	Lag      any    `json:"lag"`
}

// Members returns the cluster's members as a live node's REST API reports
// them (GET /cluster).
func (p *Patroni) Members(ctx context.Context) ([]PatroniMember, error) {
	var last error
	for _, n := range p.Nodes {
		code, body, err := httpGet(ctx, n.restURL("/cluster"))
		if err != nil || code != http.StatusOK {
			last = fmt.Errorf("%s: %d %v", n.Name, code, err)
			continue
		}
		var c struct {
			Members []PatroniMember `json:"members"`
		}
		if err := json.Unmarshal(body, &c); err != nil {
			return nil, err
		}
		return c.Members, nil
	}
	return nil, fmt.Errorf("no Patroni REST API answers GET /cluster: %v", last)
}

// WaitReplicas waits until there is a leader and every node is a member
// running as a replica on its timeline (with sync, one of them the
// synchronous standby).
func (p *Patroni) WaitReplicas(ctx context.Context, sync bool) error {
	var last string
	for {
		ms, err := p.Members(ctx)
		if err == nil {
			last = fmt.Sprintf("%+v", ms)
			if p.replicated(ms, sync) {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the Patroni cluster is not replicating: %s", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (p *Patroni) replicated(ms []PatroniMember, sync bool) bool {
	if len(ms) != len(p.Nodes) {
		return false
	}
	tl, leaders, syncs := 0, 0, 0
	for _, m := range ms {
		if m.Role == "leader" {
			leaders++
			tl = m.Timeline
		}
	}
	for _, m := range ms {
		switch {
		case m.State != "running" && m.State != "streaming":
			return false
		case m.Role == "sync_standby":
			syncs++
		}
		if m.Role != "leader" && m.Timeline != tl {
			return false
		}
	}
	return leaders == 1 && (!sync || syncs == 1)
}
