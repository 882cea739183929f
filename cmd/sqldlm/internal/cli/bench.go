package cli

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/cmd/sqldlm/internal/bench"
)

const benchSynopsis = `--dsn URL [--duration 5s] [--workers 1,8,64] [--workloads LIST] [--impls LIST] [--peers etcd] [--runs N]
       [--scale] [--coordination] [--vacuum] [--plot FILE.png] [--cpuprofile FILE] [--output table|json | --json]

Measures sqldlm's acquire+release next to the floors of the same server, in
one process and one run: the two-commit floor (an autocommit INSERT of a
lock row, then a DELETE; waiters poll) and the dialect's non-durable session
lock (pg_advisory_lock on PostgreSQL, GET_LOCK on MySQL/MariaDB; SQLite has
none). Workloads: distinct-exclusive, distinct-shared, hot-exclusive,
hot-shared (one name for all workers). Each row gives pairs/s, the pair's
latency p50/p99/p99.9, the acquire's wait p99, the handover latency on a hot
name, the server's CPU when it runs on this host, statements per pair and
the ratio sqldlm/floor.

--peers etcd runs the exclusive workloads on etcd too, in the same run:
concurrency.Mutex on an embedded one-member etcd server (fsync on; on a hot
name a session per worker, since Mutexes of one session share a key), started
by the program in bench/etcdpeer of a sqldlm checkout (a module of its own,
run with go run from --etcd-peer-dir, or the --etcd-peer binary), and adds
the ratio sqldlm/etcd. --scale adds one Client holding --held locks and
--clients Clients renewing for --clients-duration.

--coordination adds the coordination runs (--coordination-only: without
the cells): a watcher's latency to other Clients' joins and leaves
(LISTEN/NOTIFY on PostgreSQL, polling every --watch-interval elsewhere);
leader failover, from the SIGKILL of a leader in a child process (TTL
--coord-ttl) to a waiting standby's election, --failovers rounds; permit
acquire+release pairs/s of one semaphore (--semaphore-limit 8,
--semaphore-workers 32, for --duration); and the statements/s of --member-clients Clients while quiet,
with no member and with --members members.

sqldlm's schema must be migrated (or pass --migrate). The floors create the
table sqldlm_bench_floor and drop it after; lock names start with
sqldlm-bench/. Progress goes to stderr. Run it on a quiet machine: anything
else running shares the CPUs with the server and the clients.`

func runBench(ctx context.Context, args []string, s streams) error {
	fs := newFlagSet("bench", benchSynopsis, s.err)
	dsnURL := dsnFlag(fs)
	var nodes dsnList
	fs.Var(&nodes, "node", "another node of the multi-writer cluster (Galera) --dsn is a node of; repeat it for each: "+
		"the workers are spread over all of them, and the advisory floor is left out")
	duration := durationFlag(fs, "duration", bench.DurationDefault, "measured time of each cell")
	warmup := durationFlag(fs, "warmup", 0, "unmeasured time before each cell's window (default a fifth of --duration, at most 1s)")
	workers := fs.String("workers", "1,8,64", "comma-separated worker counts")
	workloads := fs.String("workloads", "", "comma-separated workloads: distinct-exclusive, distinct-shared, hot-exclusive, hot-shared, or hot, distinct, exclusive, shared (default all)")
	impls := fs.String("impls", "", "comma-separated implementations: sqldlm, two-commit, advisory (default all)")
	peers := fs.String("peers", "", "comma-separated lock services to run the exclusive workloads on too, in the same run: etcd (an embedded server, run by `go run` in --etcd-peer-dir)")
	etcdPeerDir := fs.String("etcd-peer-dir", bench.EtcdPeerDirDefault, "with --peers etcd: the bench/etcdpeer directory of a sqldlm checkout")
	etcdPeer := fs.String("etcd-peer", "", "with --peers etcd: a `BINARY` built from bench/etcdpeer, run instead of `go run`")
	runs := fs.Int("runs", bench.RunsDefault, "repeat every cell N times and report medians (the scale runs run once)")
	procs := fs.Int("procs", bench.ProcsDefault, "on a hot name, spread the sqldlm workers over up to N Clients (as N processes)")
	ttl := durationFlag(fs, "ttl", bench.TTLDefault, "lease TTL of the benchmark's Clients")
	vacuum := fs.Bool("vacuum", false, "before each cell and after the scale run's fill, VACUUM (ANALYZE) sqldlm's tables on PostgreSQL (use it when autovacuum is off), ANALYZE TABLE them on MySQL")
	scale := fs.Bool("scale", false, "add the scale runs: one Client holding --held locks, then --clients Clients")
	scaleOnly := fs.Bool("scale-only", false, "run the scale runs alone, without the cells")
	held := fs.Int("held", bench.HeldLocksDefault, "with --scale: locks one Client holds")
	clients := fs.Int("clients", bench.ClientsDefault, "with --scale: Clients renewing at once, one lock each")
	clientsDuration := durationFlag(fs, "clients-duration", bench.ClientsDurationDefault, "with --scale: how long the Clients run")
	scaleTTL := durationFlag(fs, "scale-ttl", 0, "with --scale: lease TTL of the scale runs' Clients (default --ttl)")
	scalePool := fs.Int("scale-pool", bench.ScalePoolDefault, "with --scale: connections the --clients Clients share")
	scaleListen := fs.Bool("scale-listen", false, "with --scale on PostgreSQL: keep each Client's LISTEN connection (needs --clients more server connections)")
	coordination := fs.Bool("coordination", false, "add the coordination runs: watch latency, leader failover, semaphore pairs, members' write load")
	coordinationOnly := fs.Bool("coordination-only", false, "run the coordination runs without the cells")
	coordDuration := durationFlag(fs, "coord-duration", bench.CoordDurationDefault, "with --coordination: time of the watch run and of each write-load window")
	coordTTL := durationFlag(fs, "coord-ttl", bench.CoordTTLDefault, "with --coordination: lease TTL of the failover and write-load runs")
	watchInterval := durationFlag(fs, "watch-interval", sqldlm.WatchIntervalDefault, "with --coordination: the watcher's Config.WatchInterval (its polling interval)")
	failovers := fs.Int("failovers", bench.FailoversDefault, "with --coordination: leaders killed")
	members := fs.Int("members", bench.MembersDefault, "with --coordination: members of the write-load run")
	memberClients := fs.Int("member-clients", bench.MemberClientsDefault, "with --coordination: Clients the members are spread over")
	semLimit := fs.Int("semaphore-limit", bench.SemaphoreLimitDefault, "with --coordination: the semaphore's limit")
	semWorkers := fs.Int("semaphore-workers", bench.SemaphoreWorkersDefault, "with --coordination: workers taking and releasing permits (on up to --procs Clients)")
	migrate := fs.Bool("migrate", false, "apply sqldlm's migrations first")
	cpuProfile := fs.String("cpuprofile", "", "write this process's CPU profile over the whole run to this `FILE` (go tool pprof)")
	plotFile := fs.String("plot", "", "also draw pairs/s per workload as a PNG to this `FILE`")
	output := outputFlag(fs)
	asJSON := fs.Bool("json", false, "the same as --output json")
	if err := parseCommand(fs, args, dsnURL, output); err != nil {
		return err
	}
	if *asJSON {
		if flagSet(fs, "output") && *output != "json" {
			return usagef("--json and --output %s contradict each other: pass one of them", *output)
		}
		*output = "json"
	}
	ws, err := parseWorkers(*workers)
	if err != nil {
		return err
	}
	wls, err := bench.ParseWorkloads(*workloads)
	if err != nil {
		return usagef("--workloads: %v", err)
	}
	switch {
	case *duration <= 0:
		return usagef("--duration must be positive")
	case *warmup < 0:
		return usagef("--warmup must not be negative")
	case *runs < 1 || *procs < 1:
		return usagef("--runs and --procs must be at least 1")
	case *ttl < sqldlm.TTLMin || (*scaleTTL != 0 && *scaleTTL < sqldlm.TTLMin):
		return usagef("--ttl and --scale-ttl must be at least %s", sqldlm.TTLMin)
	case (*scale || *scaleOnly) && (*held < 1 || *clients < 1 || *clientsDuration <= 0 || *scalePool < 1):
		return usagef("--held, --clients, --clients-duration and --scale-pool must be positive")
	case (*coordination || *coordinationOnly) && (*coordDuration <= 0 || *failovers < 1 || *members < 1 || *memberClients < 1 ||
		*semLimit < 1 || *semWorkers < 1):
		return usagef("--coord-duration, --failovers, --members, --member-clients, --semaphore-limit and --semaphore-workers must be positive")
	case (*coordination || *coordinationOnly) && *coordTTL < sqldlm.TTLMin:
		return usagef("--coord-ttl must be at least %s", sqldlm.TTLMin)
	case (*coordination || *coordinationOnly) && *watchInterval < 10*time.Millisecond:
		return usagef("--watch-interval must be at least 10ms")
	}
	implList, err := oneOf("--impls", "implementation", *impls, bench.Impls)
	if err != nil {
		return err
	}
	peerList, err := oneOf("--peers", "peer", *peers, bench.Peers)
	if err != nil {
		return err
	}
	var etcdPeerCmd []string
	if *etcdPeer != "" {
		etcdPeerCmd = []string{*etcdPeer}
	}
	db, err := openDSN(ctx, *dsnURL, true)
	if err != nil {
		return err
	}
	if *migrate {
		if err := sqldlm.Migrate(ctx, db, nil); err != nil {
			db.Close()
			return err
		}
	}
	audit, auditErr := auditOn(ctx, db)
	db.Close()
	if auditErr != nil {
		return auditErr
	}
	if audit {
		fmt.Fprintln(s.err, "sqldlm bench: the audit log is on in this schema: every grant and release the benchmark makes "+
			"also writes an audit row, and the figures include that cost; `sqldlm log off` turns it off (for every client "+
			"of the schema), or run the benchmark in a schema of its own")
	}

	prog := newProgress(s.err)
	cfg := bench.Config{
		DSN: *dsnURL, Nodes: nodes, Duration: *duration, Warmup: *warmup, Workers: ws, Workloads: wls, Impls: implList, Peers: peerList,
		EtcdPeerDir: *etcdPeerDir, EtcdPeer: etcdPeerCmd, Runs: *runs, Procs: *procs, TTL: *ttl, Vacuum: *vacuum,
		Scale: *scale, ScaleOnly: *scaleOnly, HeldLocks: *held, Clients: *clients, ClientsDuration: *clientsDuration, ScaleTTL: *scaleTTL,
		ScalePool: *scalePool, ScaleListen: *scaleListen,
		Coordination: *coordination, CoordinationOnly: *coordinationOnly, CoordDuration: *coordDuration, CoordTTL: *coordTTL,
		WatchInterval: *watchInterval, Failovers: *failovers, Members: *members, MemberClients: *memberClients,
		SemaphoreLimit: *semLimit, SemaphoreWorkers: *semWorkers,
		Progress: prog.update,
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	report, err := bench.Run(ctx, cfg)
	if *cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	prog.finish()
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if audit {
		if report.Settings == nil {
			report.Settings = map[string]string{}
		}
		report.Settings["sqldlm audit log"] = "on"
	}
	if *plotFile != "" {
		f, err := os.Create(*plotFile)
		if err != nil {
			return err
		}
		if err := report.WritePlot(f); err != nil {
			f.Close()
			return fmt.Errorf("plot: %w", err)
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if *output == "json" {
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
	}
	return report.WriteTable(s.out)
}

// runBenchChild is a child process of the benchmark (a hidden command).
func runBenchChild(ctx context.Context, args []string, s streams) error {
	return bench.ChildMain(ctx, args, s.in, s.out)
}

// parseWorkers parses a comma-separated list of positive worker counts.
func parseWorkers(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, usagef("--workers: %q is not a positive number", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, usagef("--workers names no worker count")
	}
	return out, nil
}

// progress shows the benchmark's progress on stderr: one line rewritten in
// place when stderr is a terminal, one line per finished step otherwise.
type progress struct {
	w    io.Writer
	tty  bool
	mu   sync.Mutex
	last time.Time
	wide bool // a line is on the terminal, to be cleared
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w}
	// A terminal, not any character device: 2>/dev/null is not one.
	p.tty = isTerminal(w)
	return p
}

func (p *progress) update(u bench.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := fmt.Sprintf("[%d/%d] %s", u.Step, u.Steps, u.What)
	if u.Elapsed > 0 || u.Done {
		line += fmt.Sprintf(": %s, %d, %.0f/s", u.Elapsed.Round(100*time.Millisecond), u.Count, u.Rate)
	}
	if !p.tty {
		if u.Done {
			fmt.Fprintln(p.w, line)
		}
		return
	}
	if !u.Done && time.Since(p.last) < 200*time.Millisecond {
		return
	}
	p.last = time.Now()
	fmt.Fprint(p.w, "\r\033[K"+line)
	p.wide = true
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && p.wide {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// auditOn reports whether sqldlm's audit log is on in db's schema (false
// when the schema is not migrated: the benchmark then says so itself).
func auditOn(ctx context.Context, db *sql.DB) (bool, error) {
	d, err := sqldlm.DetectDialect(db)
	if err != nil {
		return false, err
	}
	admin, err := sqldlm.NewAdmin(db, sqldlm.AdminConfig{Dialect: d})
	if err != nil {
		return false, err
	}
	st, err := admin.AuditSettings(ctx)
	if err != nil {
		return false, nil // not migrated, or an older schema: the benchmark reports it
	}
	return st.Enabled, nil
}

// oneOf splits a comma-separated flag value whose items must be among
// valid; what names an item in the error.
func oneOf(flagName, what, value string, valid []string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(value, ",") {
		if f = strings.TrimSpace(f); f != "" {
			if !slices.Contains(valid, f) {
				return nil, usagef("%s: unknown %s %q: use %s", flagName, what, f, strings.Join(valid, ", "))
			}
			out = append(out, f)
		}
	}
	return out, nil
}
