//go:build linux

// Package dbinstance starts throwaway PostgreSQL and MariaDB servers for the
// destructive fault tests: a server of its own that a test may pause with
// SIGSTOP, kill -9 and restart (crash recovery), or run under libfaketime to
// step its clock, without disturbing the shared servers other tests use.
//
// Each instance lives in a fresh directory under os.TempDir(), listens on
// 127.0.0.1 on a free port, and runs as the postgres or mysql system user
// when the test runs as root (initdb and mariadbd refuse root). The server
// process is a direct child of the test process with Pdeathsig SIGKILL, so
// it never outlives the test binary; t.Cleanup stops it and removes the
// directory.
//
// Start skips the test with one line when the server binaries (or, with
// Options.FakeTime, libfaketime) are missing, unless SQLDLM_TEST_REQUIRE
// names the kind, in which case it fails.
//
// Only tests import this package.
package dbinstance

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/dsn"
)

// Kind names a server kind, as in SQLDLM_TEST_REQUIRE.
type Kind string

// The kinds Start accepts.
const (
	Postgres Kind = "postgres"
	MySQL    Kind = "mysql"
)

// Options configure an instance.
type Options struct {
	// FakeTime preloads libfaketime into the server with a timestamp file,
	// so that SetClockOffset moves the server's wall clock (clock_timestamp(),
	// NOW(6), SYSDATE(6)) while its monotonic clock keeps running.
	FakeTime bool
	// PGSettings are extra PostgreSQL settings ("name=value", each passed
	// as -c), after the defaults; ignored for MariaDB.
	PGSettings []string
}

// libfaketime's two builds: the plain one for PostgreSQL (one thread per
// process) and the multi-threaded one for mariadbd.
const (
	fakeTimeLib   = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
	fakeTimeLibMT = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
)

// startTimeout bounds one (re)start of a server, crash recovery included.
const startTimeout = 90 * time.Second

// Instance is one throwaway server.
type Instance struct {
	t      testing.TB
	kind   Kind
	opts   Options
	bins   binaries
	dir    string // owned by the server user; holds data, socket, log
	data   string
	log    string
	ftFile string // libfaketime timestamp file, with FakeTime
	port   int
	cred   *syscall.Credential // server user, when running as root

	galera *galeraNode // set for a node of a Galera cluster (StartGalera)
	host   string      // the address it listens on when not 127.0.0.1 (a node in a network namespace)
	netns  string      // the network namespace it runs in, if any (netns.go)

	mu   sync.Mutex
	cmd  *exec.Cmd     // the running postmaster or mariadbd, nil when down
	done chan struct{} // closed when cmd has exited
}

type binaries struct {
	server  string // postgres or mariadbd
	initdb  string // initdb or mariadb-install-db
	version string // for messages
}

// Start initialises and starts a new server of kind ("postgres" or "mysql")
// with an empty database "test", and registers its shutdown and removal with
// t.Cleanup. It skips t when the binaries are missing, unless
// SQLDLM_TEST_REQUIRE names kind.
func Start(t testing.TB, kind string, o Options) *Instance {
	t.Helper()
	k := Kind(kind)
	bins, why := findBinaries(k)
	if why == "" && o.FakeTime {
		lib := fakeTimeLib
		if k == MySQL {
			lib = fakeTimeLibMT
		}
		if _, err := os.Stat(lib); err != nil {
			why = "libfaketime is not installed (" + lib + " missing; apt-get install libfaketime)"
		}
	}
	if why != "" {
		msg := fmt.Sprintf("dbinstance: no throwaway %s server: %s", kind, why)
		if required(kind) {
			t.Fatalf("%s (SQLDLM_TEST_REQUIRE=%s makes this a failure)", msg, os.Getenv("SQLDLM_TEST_REQUIRE"))
		}
		t.Skip(msg)
	}

	i := &Instance{t: t, kind: k, opts: o, bins: bins}
	sweepOnce.Do(sweepStale)
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	i.dir, i.data, i.log = dir, filepath.Join(dir, "data"), filepath.Join(dir, "server.log")
	t.Cleanup(func() {
		i.Stop()
		if t.Failed() {
			t.Logf("dbinstance: %s server log (%s), last lines:\n%s", kind, i.log, i.LogTail(40))
		}
		_ = os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		name := map[Kind]string{Postgres: "postgres", MySQL: "mysql"}[k]
		i.cred, err = lookupCred(name)
		if err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
		if err := os.Chown(dir, int(i.cred.Uid), int(i.cred.Gid)); err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
	}
	if o.FakeTime {
		i.ftFile = filepath.Join(dir, "faketime")
		if err := i.SetClockOffset(0); err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
	}
	if err := i.initdb(); err != nil {
		t.Fatalf("dbinstance: initialise %s: %v", kind, err)
	}
	if err := i.startOnFreePort(); err != nil {
		t.Fatalf("dbinstance: start %s: %v", kind, err)
	}
	if k == Postgres {
		if err := i.exec(i.adminDSN("postgres"), "CREATE DATABASE test"); err != nil {
			t.Fatalf("dbinstance: %v", err)
		}
	}
	return i
}

// Kind returns the instance's kind.
func (i *Instance) Kind() string { return string(i.kind) }

// DSN returns a sqldlm DSN URL for the database "test" on the instance.
func (i *Instance) DSN() string { return i.adminDSN("test") }

// Addr returns the instance's TCP address: 127.0.0.1:port, or its network
// namespace's address for a Galera node started with GaleraOptions.Netns.
func (i *Instance) Addr() string {
	host := i.host
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(i.port))
}

// Dir returns the instance's directory (data directory, log, socket).
func (i *Instance) Dir() string { return i.dir }

func (i *Instance) adminDSN(db string) string {
	if i.kind == Postgres {
		return "postgres://postgres@" + i.Addr() + "/" + db + "?sslmode=disable&connect_timeout=5"
	}
	return "mysql://root@" + i.Addr() + "/" + db + "?timeout=5s"
}

// Start starts the server after Crash or Stop and waits until it answers
// queries, which after Crash includes crash recovery.
func (i *Instance) Start() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cmd != nil {
		return errors.New("dbinstance: server is already running")
	}
	logf, err := os.OpenFile(i.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := i.serverCommand()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := startIn(i.netns, cmd); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	watchdog(cmd.Process.Pid, i.data)
	i.cmd, i.done = cmd, done

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	probe := i.adminDSN(map[Kind]string{Postgres: "postgres", MySQL: "mysql"}[i.kind])
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		var err error
		if i.galera != nil {
			err = i.galera.ready(pctx, i)
		} else {
			var db *sql.DB
			if db, _, err = dsn.Open(pctx, probe); err == nil {
				db.Close()
			}
		}
		pcancel()
		if err == nil {
			return nil
		}
		select {
		case <-done:
			i.cmd, i.done = nil, nil
			return fmt.Errorf("%s server exited during start: %v", i.kind, err)
		case <-ctx.Done():
			i.killLocked()
			return fmt.Errorf("%s server did not answer within %v: %v", i.kind, startTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startOnFreePort picks a free port and starts the server on it. The port
// is free when picked but may be taken before the server binds it; a few
// are tried.
func (i *Instance) startOnFreePort() error {
	for attempt := 0; ; attempt++ {
		var err error
		if i.port, err = freePort(); err != nil {
			return err
		}
		if err = i.Start(); err == nil {
			return nil
		}
		if attempt == 2 || !strings.Contains(i.LogTail(20), "in use") {
			return fmt.Errorf("%v\n%s", err, i.LogTail(20))
		}
	}
}

func (i *Instance) serverCommand() *exec.Cmd {
	var cmd *exec.Cmd
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "TZ=UTC"}
	switch i.kind {
	case Postgres:
		cmd = exec.Command(i.bins.server, "-D", i.data,
			"-c", "port="+strconv.Itoa(i.port),
			"-c", "listen_addresses=127.0.0.1",
			"-c", "unix_socket_directories="+i.dir,
			"-c", "fsync=on",
			"-c", "synchronous_commit=on",
			"-c", "shared_buffers=16MB",
			"-c", "max_connections=100",
			"-c", "logging_collector=off",
			"-c", "TimeZone=UTC")
		for _, setting := range i.opts.PGSettings {
			cmd.Args = append(cmd.Args, "-c", setting)
		}
	case MySQL:
		args := []string{"--no-defaults",
			"--datadir=" + i.data,
			"--port=" + strconv.Itoa(i.port),
			"--bind-address=127.0.0.1",
			"--socket=" + filepath.Join(i.dir, "sock"),
			"--pid-file=" + filepath.Join(i.dir, "mariadbd.pid"),
			"--tmpdir=" + i.dir, // as for the install: not shared with other instances
			"--skip-name-resolve",
			"--innodb-buffer-pool-size=64M",
			"--innodb-log-file-size=48M",
			"--innodb-flush-log-at-trx-commit=1",
			"--sync-binlog=1",
			"--max-connections=200",
			"--default-time-zone=+00:00",
			"--init-file=" + filepath.Join(i.dir, "init.sql"),
			// No --log-error: the log goes to stderr, which Start appends to
			// the log file.
		}
		if i.cred == nil && os.Geteuid() == 0 {
			args = append(args, "--user=mysql")
		}
		if i.galera != nil {
			args = append(args, i.galera.args()...)
		}
		cmd = exec.Command(i.bins.server, args...)
	}
	if i.opts.FakeTime {
		lib := fakeTimeLib
		if i.kind == MySQL {
			lib = fakeTimeLibMT
		}
		env = append(env, "LD_PRELOAD="+lib, "FAKETIME_TIMESTAMP_FILE="+i.ftFile,
			"FAKETIME_NO_CACHE=1", "FAKETIME_DONT_FAKE_MONOTONIC=1")
	}
	cmd.Env = env
	cmd.Dir = i.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: i.cred}
	return cmd
}

// initdb creates the data directory.
func (i *Instance) initdb() error {
	var cmd *exec.Cmd
	switch i.kind {
	case Postgres:
		cmd = exec.Command(i.bins.initdb, "-D", i.data, "-U", "postgres", "--auth=trust",
			"--no-sync", "--locale=C", "--encoding=UTF8")
	case MySQL:
		// Re-run at every start: lets root in over TCP from 127.0.0.1
		// (--skip-name-resolve) and creates the test database.
		init := "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';\n" +
			"GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n" +
			"CREATE DATABASE IF NOT EXISTS test;\n"
		if err := os.WriteFile(filepath.Join(i.dir, "init.sql"), []byte(init), 0o644); err != nil {
			return err
		}
		// Each instance its own temporary directory: instances initialised
		// at once (a cluster's nodes, tests in parallel) had their
		// temporary tables collide in /tmp ("Error on delete of
		// '/tmp/#sql-temptable-...'").
		cmd = exec.Command(i.bins.initdb, "--no-defaults", "--datadir="+i.data,
			"--auth-root-authentication-method=normal", "--skip-test-db", "--tmpdir="+i.dir)
		if i.cred != nil {
			cmd.Args = append(cmd.Args, "--user=mysql")
		}
	}
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	cmd.Dir = i.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if i.kind == Postgres {
		cmd.SysProcAttr.Credential = i.cred
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v\n%s", filepath.Base(i.bins.initdb), err, out)
	}
	return nil
}

// pids returns the server's processes: the postmaster first, then its
// children (PostgreSQL), or mariadbd alone (with its descendants on a Galera
// node). Empty when the server is down.
func (i *Instance) pidsLocked() []int {
	if i.cmd == nil {
		return nil
	}
	main := i.cmd.Process.Pid
	if i.galera != nil {
		// A Galera node's state transfer runs a script and an rsync daemon
		// under mariadbd: they go with it.
		pids := []int{main}
		for k := 0; k < len(pids); k++ {
			pids = append(pids, childrenOf(pids[k])...)
		}
		return pids
	}
	if i.kind != Postgres {
		return []int{main}
	}
	return append([]int{main}, childrenOf(main)...)
}

// Pause stops every server process with SIGSTOP. Clients' connections stay
// open; their queries hang until Resume.
func (i *Instance) Pause() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cmd == nil {
		return
	}
	// The postmaster first, so that it forks no backend the list misses.
	_ = syscall.Kill(i.cmd.Process.Pid, syscall.SIGSTOP)
	for _, pid := range i.pidsLocked() {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
}

// Resume continues every server process after Pause.
func (i *Instance) Resume() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.resumeLocked()
}

func (i *Instance) resumeLocked() {
	pids := i.pidsLocked()
	slices.Reverse(pids) // children first, the postmaster last
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
}

// Crash kills every server process with SIGKILL, as a power loss would, and
// waits until they are gone. Start brings the server back through crash
// recovery.
func (i *Instance) Crash() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.killLocked()
}

func (i *Instance) killLocked() {
	if i.cmd == nil {
		return
	}
	main := i.cmd.Process.Pid
	// Stop the postmaster so that its children keep it as their parent
	// (and it forks no new one) while they are listed and killed.
	_ = syscall.Kill(main, syscall.SIGSTOP)
	pids := i.pidsLocked()
	for _, pid := range pids[1:] {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	_ = syscall.Kill(main, syscall.SIGKILL)
	<-i.done
	// The children are re-parented; wait until each is dead or a zombie,
	// which has released the shared memory a new postmaster checks.
	deadline := time.Now().Add(30 * time.Second)
	for _, pid := range pids[1:] {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	i.cmd, i.done = nil, nil
}

// Stop shuts the server down cleanly (resuming it first if it is paused),
// and kills it if it has not stopped within 30 s. t.Cleanup calls it.
func (i *Instance) Stop() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cmd == nil {
		return
	}
	i.resumeLocked()
	sig := syscall.SIGTERM // mariadbd: normal shutdown
	if i.kind == Postgres {
		sig = syscall.SIGINT // fast shutdown: disconnect clients, checkpoint
	}
	_ = i.cmd.Process.Signal(sig)
	select {
	case <-i.done:
		i.cmd, i.done = nil, nil
	case <-time.After(30 * time.Second):
		i.t.Logf("dbinstance: %s did not stop within 30s; killing it", i.kind)
		i.killLocked()
	}
}

// Running reports whether the server process is up (it may be paused).
func (i *Instance) Running() bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.cmd != nil
}

// SetClockOffset moves the server's wall clock d away from the real one
// (negative d moves it back) by rewriting the libfaketime timestamp file,
// which the server reads at every clock call. It needs Options.FakeTime.
func (i *Instance) SetClockOffset(d time.Duration) error {
	if i.ftFile == "" {
		return errors.New("dbinstance: SetClockOffset needs Options.FakeTime")
	}
	s := strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
	if d >= 0 {
		s = "+" + s
	}
	// Written to a temporary file and renamed, so that the server never
	// reads a half-written offset.
	tmp := i.ftFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(s+"s\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, i.ftFile)
}

// Session is one client connection to the server.
type Session struct {
	ID    int64  // PostgreSQL backend PID, or MariaDB connection ID
	App   string // application_name (PostgreSQL); user@host (MariaDB)
	DB    string
	State string // pg_stat_activity.state, or processlist command
	Query string
}

// Sessions lists the client sessions other than the one asking.
func (i *Instance) Sessions(ctx context.Context) ([]Session, error) {
	db, _, err := dsn.Open(ctx, i.DSN())
	if err != nil {
		return nil, err
	}
	defer db.Close()
	q := `SELECT pid, COALESCE(application_name, ''), COALESCE(datname, ''), COALESCE(state, ''), COALESCE(query, '')
		FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()`
	if i.kind == MySQL {
		q = `SELECT id, CONCAT(user, '@', host), COALESCE(db, ''), command, COALESCE(info, '')
			FROM information_schema.processlist WHERE id <> CONNECTION_ID() AND command <> 'Daemon'`
	}
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Session
	for rows.Next() {
		var s Session
		if err := rows.Scan(&s.ID, &s.App, &s.DB, &s.State, &s.Query); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// KillSession ends one session from the server side: pg_terminate_backend
// or KILL CONNECTION.
func (i *Instance) KillSession(ctx context.Context, id int64) error {
	if i.kind == Postgres {
		db, _, err := dsn.Open(ctx, i.DSN())
		if err != nil {
			return err
		}
		defer db.Close()
		var ok bool
		if err := db.QueryRowContext(ctx, "SELECT pg_terminate_backend($1)", id).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("dbinstance: no session %d", id)
		}
		return nil
	}
	// KILL takes no placeholder; id is an integer, formatted here.
	return i.exec(i.DSN(), "KILL CONNECTION "+strconv.FormatInt(id, 10))
}

func (i *Instance) exec(rawDSN, stmt string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, _, err := dsn.Open(ctx, rawDSN)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, stmt); err != nil {
		return fmt.Errorf("%s: %w", stmt, err)
	}
	return nil
}

// Open opens a pool on the instance's test database, closed when the test
// ends.
func (i *Instance) Open(t testing.TB) *sql.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, _, err := dsn.Open(ctx, i.DSN())
	if err != nil {
		t.Fatalf("dbinstance: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// LogTail returns the last n lines of the server's log.
func (i *Instance) LogTail(n int) string {
	b, err := os.ReadFile(i.log)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// watchdog makes sure the server (pid) dies with the test process, should
// Pdeathsig not do it (once, a mariadbd outlived a test binary killed with
// SIGKILL): a shell, deliberately not tied to the test's lifetime, polls
// once a second and kills the server with SIGKILL when the test process is
// gone; it exits by itself when the server does. A PID is only ever killed
// while its command line still names the instance's data directory (mark),
// so a PID the kernel reused for another process (such as a shared server
// restarted meanwhile) is never touched.
func watchdog(pid int, mark string) {
	script := `ours() { tr '\0' '\n' <"/proc/$2/cmdline" 2>/dev/null | grep -qF -- "$3"; }
while kill -0 "$1" 2>/dev/null; do ours || exit 0; sleep 1; done
ours && kill -9 "$2"`
	cmd := exec.Command("/bin/sh", "-c", script, "sqldlm-inst-watchdog", strconv.Itoa(os.Getpid()), strconv.Itoa(pid), mark)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // out of the test's process group and its signals
	if cmd.Start() == nil {
		go func() { _ = cmd.Wait() }()
	}
}

// dirPrefix starts the name of every instance's directory under
// os.TempDir().
const dirPrefix = "sqldlm-inst-"

var sweepOnce sync.Once

// sweepStale removes, once per process, the instance directories more than
// an hour old: leftovers of test processes killed before their cleanup ran
// (their servers died with them).
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		if st, err := os.Stat(d); err == nil && st.IsDir() && time.Since(st.ModTime()) > time.Hour {
			_ = os.RemoveAll(d)
		}
	}
}

func findBinaries(k Kind) (binaries, string) {
	switch k {
	case Postgres:
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		// Newest major version first.
		sort.Slice(dirs, func(a, b int) bool { return versionOf(dirs[a]) > versionOf(dirs[b]) })
		for _, d := range dirs {
			b := binaries{server: filepath.Join(d, "postgres"), initdb: filepath.Join(d, "initdb"), version: filepath.Base(filepath.Dir(d))}
			if executable(b.server) && executable(b.initdb) {
				return b, ""
			}
		}
		return binaries{}, "no /usr/lib/postgresql/*/bin/postgres and initdb (apt-get install postgresql)"
	case MySQL:
		server, err1 := lookPath("mariadbd", "/usr/sbin/mariadbd")
		install, err2 := lookPath("mariadb-install-db", "/usr/bin/mariadb-install-db")
		if err1 != nil || err2 != nil {
			return binaries{}, "mariadbd or mariadb-install-db not found (apt-get install mariadb-server)"
		}
		return binaries{server: server, initdb: install, version: "mariadb"}, ""
	default:
		return binaries{}, fmt.Sprintf("unknown kind %q (want postgres or mysql)", k)
	}
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func lookPath(name, fallback string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if executable(fallback) {
		return fallback, nil
	}
	return "", fmt.Errorf("%s not found", name)
}

func executable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

func lookupCred(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("server user: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("server user %s: bad uid/gid %s/%s", name, u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func required(kind string) bool {
	return slices.Contains(strings.Split(os.Getenv("SQLDLM_TEST_REQUIRE"), ","), kind)
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, _, ok := procStat(p); ok && ppid == pid {
			out = append(out, p)
		}
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	_, state, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// procStat reads the parent PID and state of pid from /proc/pid/stat.
func procStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses.
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0][0], err == nil
}
