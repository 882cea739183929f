// Package bench measures sqldlm's acquire+release against the floors the
// same database server allows, in one process and one run:
//
//   - the two-commit floor: an autocommit INSERT of a lock row, then a
//     DELETE (waiters on a taken name poll with backoff);
//   - the dialect's non-durable session lock: pg_advisory_lock on
//     PostgreSQL, GET_LOCK on MySQL/MariaDB (SQLite has none).
//
// Each workload (distinct names or one hot name, exclusive or shared) runs
// with each worker count for each implementation: a cell. [Run] repeats the
// cells and reports medians; with Config.Scale it also measures one Client
// holding many locks and many Clients renewing their leases; with
// Config.Coordination, membership, leader election and semaphores (see
// [Coordination]).
//
// The sqldlm schema must be migrated (sqldlm.Migrate, `sqldlm migrate up`).
// The floors create their table, sqldlm_bench_floor, and drop it after.
// Lock names start with "sqldlm-bench/".
//
// `sqldlm bench` is the command-line front end; bench_test.go holds the same
// measurements as Go benchmarks.
package bench

import (
	"cmp"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dsn"
)

// Defaults of [Config].
const (
	DurationDefault        = 5 * time.Second
	RunsDefault            = 1
	ProcsDefault           = 8
	TTLDefault             = 15 * time.Second
	HeldLocksDefault       = 100_000
	ClientsDefault         = 1000
	ClientsDurationDefault = 60 * time.Second
	ScalePoolDefault       = 32
	scaleWorkers           = 8 // workers filling, measuring and releasing the held locks
)

// WorkersDefault are the worker counts measured when Config.Workers is empty.
var WorkersDefault = []int{1, 8, 64}

// Config configures [Run]. Zero fields take their defaults.
type Config struct {
	// DSN is a sqldlm DSN URL: postgres://, mysql:// or sqlite://.
	DSN string
	// Nodes are DSNs of the other nodes of a multi-writer cluster (Galera)
	// that DSN is a node of. The sqldlm and two-commit workers of a cell are
	// then spread over DSN and Nodes (worker i on node i mod n; sqldlm's
	// Clients too, at least one per node), and the advisory floor, whose
	// locks are each node's own, is left out.
	Nodes []string
	// Duration is the measured time of each cell. Defaults to 5s.
	Duration time.Duration
	// Warmup runs each cell unmeasured before its window. Defaults to a
	// fifth of Duration, at most 1s.
	Warmup time.Duration
	// Workers are the worker counts (goroutines) of the cells. Defaults to
	// 1, 8, 64.
	Workers []int
	// Workloads to run. Defaults to all (see [ParseWorkloads]).
	Workloads []Workload
	// Impls to run: ImplSqldlm, ImplTwoCommit, ImplAdvisory. Defaults to
	// all (ratios need the floors).
	Impls []string
	// Peers are lock services to run the exclusive workloads on beside
	// sqldlm, in the same run: PeerEtcd. Each run of the cells ends with
	// the peers' cells.
	Peers []string
	// EtcdPeerDir is the bench/etcdpeer directory of a checkout, where the
	// etcd peer is run with `go run .`. Defaults to EtcdPeerDirDefault.
	EtcdPeerDir string
	// EtcdPeer, if set, is the command (and its first arguments) that runs
	// the etcd peer instead: a binary built from bench/etcdpeer.
	EtcdPeer []string
	// Runs repeats every cell; the report gives medians. Defaults to 1. The
	// scale runs run once.
	Runs int
	// Procs: on a hot name the sqldlm workers are spread over
	// min(workers, Procs) Clients, as if in that many processes, so that a
	// release must reach waiters through the database (a release wakes
	// waiters of its own Client directly). Distinct names use one Client.
	// Defaults to 8.
	Procs int
	// TTL of the benchmark's Clients. Defaults to 15s.
	TTL time.Duration
	// Vacuum cleans sqldlm's tables and the floor's before each cell and
	// after the scale run's fill, as the server's own maintenance would:
	// VACUUM (ANALYZE) on PostgreSQL (on a server whose autovacuum is off,
	// dead rows pile up over the run and slow the later cells), ANALYZE
	// TABLE on MySQL (fresh statistics). Nothing on SQLite.
	Vacuum bool

	// Scale adds the scale runs: one Client holding HeldLocks locks, and
	// Clients Clients holding a lock each for ClientsDuration.
	Scale bool
	// ScaleOnly runs the scale runs without the cells (and without the
	// coordination runs unless Coordination is set).
	ScaleOnly bool
	// HeldLocks is how many locks one Client holds. Defaults to 100,000.
	HeldLocks int
	// Clients is how many Clients renew their leases at once. Defaults to 1,000.
	Clients int
	// ClientsDuration is how long they do. Defaults to 60s.
	ClientsDuration time.Duration
	// ScaleTTL is the TTL of the scale runs' Clients. Defaults to TTL.
	ScaleTTL time.Duration
	// ScalePool is the connection pool the Clients of the N-client run
	// share. Defaults to 32.
	ScalePool int
	// ScaleListen keeps each PostgreSQL Client's LISTEN connection in the
	// N-client run (one server connection per Client, taken from the pool,
	// which is then Clients+ScalePool). Off by default: a server with the
	// default max_connections (100) cannot hold 1,000 of them, so the
	// Clients wait by polling, which this run does not exercise anyway.
	ScaleListen bool

	// Coordination adds the coordination runs (see [Coordination]): a
	// watcher's latency to joins and leaves, leader failover after
	// SIGKILL, semaphore permit pairs, and the statements of Members
	// members.
	Coordination bool
	// CoordinationOnly runs the coordination runs without the cells (and
	// without the scale runs unless Scale is set).
	CoordinationOnly bool
	// CoordTTL is the lease TTL of the failover run's leader and standby
	// and of the write-load run's Clients. Defaults to 2s.
	CoordTTL time.Duration
	// CoordDuration is the time of the watch run and of each of the
	// write-load run's two quiet windows. Defaults to 10s.
	CoordDuration time.Duration
	// WatchInterval is the watcher's Config.WatchInterval: how often it
	// polls where no notification wakes it (MySQL, SQLite). Defaults to
	// sqldlm.WatchIntervalDefault (1s).
	WatchInterval time.Duration
	// Failovers is the number of leaders killed. Defaults to 5.
	Failovers int
	// Members is the number of members of the write-load run, spread over
	// MemberClients Clients. Default to 1,000 and 10.
	Members, MemberClients int
	// SemaphoreLimit and SemaphoreWorkers: the semaphore run's limit and
	// workers (spread over min(workers, Procs) Clients). Default to 8 and 32.
	SemaphoreLimit, SemaphoreWorkers int
	// Child is the command line that starts a child process of the
	// benchmark (arguments follow it). Defaults to this executable with
	// the argument ChildCommand: its main must route that to [ChildMain].
	Child []string

	// Progress, if set, receives the benchmark's progress: at the start of
	// every step, about every 250ms during it, and at its end.
	Progress func(Progress)
}

// Progress is a progress report of [Run].
type Progress struct {
	Step, Steps int    // this step, and how many there are
	What        string // "run 1/3 hot-exclusive workers=8 sqldlm", "scale: fill 100000 locks"
	Elapsed     time.Duration
	Count       int64   // pairs (or locks, clients) so far
	Rate        float64 // Count per second of Elapsed
	Done        bool    // the step ended; Count and Rate are final
}

func (c Config) withDefaults() (Config, error) {
	c.Duration = cmp.Or(c.Duration, DurationDefault)
	if c.Warmup == 0 {
		c.Warmup = min(c.Duration/5, time.Second)
	}
	if len(c.Workers) == 0 {
		c.Workers = WorkersDefault
	}
	if len(c.Workloads) == 0 {
		c.Workloads = Workloads
	}
	if len(c.Impls) == 0 {
		c.Impls = Impls
	}
	if err := among("implementation", c.Impls, Impls); err != nil {
		return c, err
	}
	if err := among("peer", c.Peers, Peers); err != nil {
		return c, err
	}
	c.EtcdPeerDir = cmp.Or(c.EtcdPeerDir, EtcdPeerDirDefault)
	c.Runs = cmp.Or(c.Runs, RunsDefault)
	c.Procs = cmp.Or(c.Procs, ProcsDefault)
	c.TTL = cmp.Or(c.TTL, TTLDefault)
	c.HeldLocks = cmp.Or(c.HeldLocks, HeldLocksDefault)
	c.Clients = cmp.Or(c.Clients, ClientsDefault)
	c.ClientsDuration = cmp.Or(c.ClientsDuration, ClientsDurationDefault)
	c.ScaleTTL = cmp.Or(c.ScaleTTL, c.TTL)
	c.ScalePool = cmp.Or(c.ScalePool, ScalePoolDefault)
	c.CoordTTL = cmp.Or(c.CoordTTL, CoordTTLDefault)
	c.CoordDuration = cmp.Or(c.CoordDuration, CoordDurationDefault)
	c.WatchInterval = cmp.Or(c.WatchInterval, sqldlm.WatchIntervalDefault)
	c.Failovers = cmp.Or(c.Failovers, FailoversDefault)
	c.Members = cmp.Or(c.Members, MembersDefault)
	c.MemberClients = cmp.Or(c.MemberClients, MemberClientsDefault)
	c.SemaphoreLimit = cmp.Or(c.SemaphoreLimit, SemaphoreLimitDefault)
	c.SemaphoreWorkers = cmp.Or(c.SemaphoreWorkers, SemaphoreWorkersDefault)
	switch {
	case c.DSN == "":
		return c, errors.New("bench: Config.DSN is empty")
	case c.Duration < 0 || c.Warmup < 0 || c.ClientsDuration < 0 || c.CoordDuration < 0 || c.WatchInterval < 0:
		return c, errors.New("bench: durations must not be negative")
	case c.Runs < 0 || c.Procs < 0 || c.HeldLocks < 0 || c.Clients < 0 || c.ScalePool < 0 || c.Failovers < 0 ||
		c.Members < 0 || c.MemberClients < 0 || c.SemaphoreLimit < 0 || c.SemaphoreWorkers < 0:
		return c, errors.New("bench: counts must not be negative")
	case c.TTL < sqldlm.TTLMin || c.ScaleTTL < sqldlm.TTLMin || c.CoordTTL < sqldlm.TTLMin:
		return c, fmt.Errorf("bench: the TTL must be at least %s", sqldlm.TTLMin)
	}
	for _, w := range c.Workers {
		if w < 1 {
			return c, fmt.Errorf("bench: worker count %d: must be at least 1", w)
		}
	}
	return c, nil
}

// env is one benchmark's database and settings.
type env struct {
	cfg    Config
	d      dsn.DSN
	nodes  []dsn.DSN // d, then Config.Nodes
	fam    *family
	cpu    *cpuSampler
	runID  string
	report func(Progress)
}

func newEnv(ctx context.Context, cfg Config) (*env, *Report, error) {
	d, err := dsn.Parse(cfg.DSN)
	if err != nil {
		return nil, nil, err
	}
	fam := families[d.Dialect]
	if fam == nil {
		return nil, nil, fmt.Errorf("bench: no floors for dialect %q", d.Dialect)
	}
	e := &env{cfg: cfg, d: d, nodes: []dsn.DSN{d}, fam: fam, runID: randomID(), report: cfg.Progress}
	for _, raw := range cfg.Nodes {
		n, err := dsn.Parse(raw)
		if err != nil {
			return nil, nil, fmt.Errorf("bench: node: %w", err)
		}
		if n.Dialect != d.Dialect {
			return nil, nil, fmt.Errorf("bench: node %s is %s, not %s like the DSN", n.Host, n.Dialect, d.Dialect)
		}
		e.nodes = append(e.nodes, n)
	}
	if e.report == nil {
		e.report = func(Progress) {}
	}
	cpu, cpuWhat := newCPUSampler(d, fam)
	e.cpu = cpu

	// Check the server, its schema and read its settings.
	db, _, err := openPool(d, 2)
	if err != nil {
		return nil, nil, err
	}
	defer db.Close()
	if err := db.PingContext(ctx); err != nil {
		return nil, nil, fmt.Errorf("%s server at %s does not answer: %w", d.Dialect, d.Host, err)
	}
	c, err := sqldlm.New(db, sqldlm.Config{TTL: cfg.TTL})
	if err != nil {
		return nil, nil, err
	}
	_ = c.Close()
	version, settings, err := fam.settings(ctx, db)
	if err != nil {
		return nil, nil, fmt.Errorf("read the server's settings: %w", err)
	}
	host := d.Host
	if len(e.nodes) > 1 {
		hosts := make([]string, len(e.nodes))
		for i, n := range e.nodes {
			hosts[i] = n.Host
		}
		host = strings.Join(hosts, ",")
		if settings == nil {
			settings = map[string]string{}
		}
		settings["spread over nodes"] = strconv.Itoa(len(e.nodes))
	}
	r := &Report{
		Dialect:         d.Dialect,
		Server:          version,
		Host:            host,
		Settings:        settings,
		Machine:         machine(),
		Started:         time.Now().UTC(),
		DurationSeconds: cfg.Duration.Seconds(),
		WarmupSeconds:   cfg.Warmup.Seconds(),
		Runs:            cfg.Runs,
		Procs:           cfg.Procs,
		TTLSeconds:      cfg.TTL.Seconds(),
		DBCPU:           cpuWhat,
		Pools:           poolsNote(fam),
		Vacuum:          cfg.Vacuum && fam.vacuum != "",
	}
	return e, r, nil
}

func poolsNote(f *family) string {
	s := "sqldlm: workers+clients+2 connections shared by the cell's Clients; two-commit: "
	if f.floorOneConn {
		s += "1 connection"
	} else {
		s += "workers+2 connections"
	}
	if f.advisory != nil {
		s += "; advisory: one dedicated connection per worker"
	}
	return s
}

func randomID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Run runs the benchmark cfg describes and returns its report. It stops
// early, with ctx's error, when ctx ends.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	e, r, err := newEnv(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := e.createFloor(ctx); err != nil {
		return nil, err
	}
	defer e.dropFloor()

	var cells []cellKey
	var peers []string
	for _, wl := range cfg.Workloads {
		if cfg.ScaleOnly || cfg.CoordinationOnly {
			break
		}
		for _, w := range cfg.Workers {
			for _, impl := range Impls {
				if slices.Contains(cfg.Impls, impl) && e.supports(impl, wl) {
					cells = append(cells, cellKey{wl, w, impl})
				}
			}
		}
		for _, p := range cfg.Peers {
			if peerSupports(p, wl) && !slices.Contains(peers, p) {
				peers = append(peers, p)
			}
		}
	}
	steps := (len(cells) + len(peers)) * cfg.Runs
	if cfg.Scale || cfg.ScaleOnly {
		steps += scaleSteps
	}
	if cfg.Coordination || cfg.CoordinationOnly {
		steps += coordSteps
	}
	results := map[cellKey][]*cellResult{}
	primitives := map[cellKey]string{}
	step := 0
	for run := 1; run <= cfg.Runs; run++ {
		for _, k := range cells {
			step++
			what := fmt.Sprintf("run %d/%d %s workers=%d %s", run, cfg.Runs, k.wl.Name(), k.workers, k.impl)
			res, prim, err := e.cell(ctx, k.wl, k.workers, k.impl, fmt.Sprintf("r%d", run), step, steps, what)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			results[k] = append(results[k], res)
			primitives[k] = prim
		}
		for _, p := range peers {
			step++
			what := fmt.Sprintf("run %d/%d %s: every exclusive cell", run, cfg.Runs, p)
			e.report(Progress{Step: step, Steps: steps, What: what})
			res, prim, err := e.runPeer(ctx, p, fmt.Sprintf("r%d", run))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, err)
			}
			for k, c := range res {
				results[k] = append(results[k], c)
				primitives[k] = prim
			}
			e.report(Progress{Step: step, Steps: steps, What: what, Done: true})
		}
	}
	// A row per cell, the peers' after the database's of the same workload
	// and worker count.
	for _, wl := range cfg.Workloads {
		for _, w := range cfg.Workers {
			for _, impl := range rowOrder {
				if k := (cellKey{wl, w, impl}); results[k] != nil {
					r.Rows = append(r.Rows, buildRow(k.wl, k.workers, k.impl, primitives[k], results[k]))
				}
			}
		}
	}
	r.fillRatios()
	if cfg.Scale || cfg.ScaleOnly {
		s, err := e.scale(ctx, step, steps)
		if err != nil {
			return nil, err
		}
		r.Scale = s
		step += scaleSteps
	}
	if cfg.Coordination || cfg.CoordinationOnly {
		co, err := e.coordination(ctx, step, steps)
		if err != nil {
			return nil, err
		}
		r.Coordination = co
	}
	r.Finished = time.Now().UTC()
	r.Machine.LoadEnd = loadAverage()
	return r, nil
}

// among checks that every name in got is one of valid; what names them in
// the error.
func among(what string, got, valid []string) error {
	for _, g := range got {
		if !slices.Contains(valid, g) {
			return fmt.Errorf("bench: unknown %s %q: use %s", what, g, strings.Join(valid, ", "))
		}
	}
	return nil
}

// cellKey names a cell: a workload, a worker count and an implementation
// (or a peer).
type cellKey struct {
	wl      Workload
	workers int
	impl    string
}

// cellNodes returns the nodes a cell of workers workers spreads over: all
// of them, or as many as there are workers.
func (e *env) cellNodes(workers int) []dsn.DSN {
	return e.nodes[:max(min(workers, len(e.nodes)), 1)]
}

// supports reports whether impl can run wl on this dialect.
func (e *env) supports(impl string, wl Workload) bool {
	if impl == ImplAdvisory && len(e.nodes) > 1 {
		return false // each node's advisory locks are its own: no lock across the cluster
	}
	switch impl {
	case ImplSqldlm:
		return true
	case ImplTwoCommit:
		return !wl.Shared // a row is exclusive
	case ImplAdvisory:
		return e.fam.advisory != nil && (!wl.Shared || e.fam.advisory.lockShared != "")
	}
	return false
}

func (e *env) createFloor(ctx context.Context) error {
	db, _, err := openPool(e.d, 1)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, e.fam.dropFloor); err != nil {
		return fmt.Errorf("drop the floor's table: %w", err)
	}
	if _, err := db.ExecContext(ctx, e.fam.createFloor); err != nil {
		return fmt.Errorf("create the floor's table: %w", err)
	}
	return nil
}

func (e *env) dropFloor() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, _, err := openPool(e.d, 1)
	if err != nil {
		return
	}
	defer db.Close()
	_, _ = db.ExecContext(ctx, e.fam.dropFloor)
}

func (e *env) vacuum(ctx context.Context) error {
	db, _, err := openPool(e.d, 1)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, e.fam.vacuum); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	return nil
}

// cell sets up and runs one cell; tag makes its lock names unique.
func (e *env) cell(ctx context.Context, wl Workload, workers int, impl, tag string, step, steps int, what string) (*cellResult, string, error) {
	s, err := e.setup(ctx, wl, workers, impl, tag)
	if err != nil {
		return nil, "", err
	}
	defer s.close()
	e.report(Progress{Step: step, Steps: steps, What: what})
	res, err := runCell(ctx, s.workers, s.counter, e.cpu, wl.Hot && !wl.Shared, e.cfg.Warmup, e.cfg.Duration,
		func(elapsed time.Duration, pairs int64) {
			p := Progress{Step: step, Steps: steps, What: what, Elapsed: elapsed, Count: pairs}
			if elapsed > 0 {
				p.Rate = float64(pairs) / elapsed.Seconds()
			}
			e.report(p)
		})
	if err != nil {
		return nil, "", err
	}
	e.report(Progress{Step: step, Steps: steps, What: what, Elapsed: e.cfg.Duration, Count: res.pairs, Rate: res.rate(), Done: true})
	return res, s.primitive, nil
}

// setupResult is a cell's workers and what to close after.
type setupResult struct {
	workers   []worker
	counter   *stmtCounter
	primitive string
	closers   []func()
}

func (s *setupResult) close() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// lockName is the name worker i of a cell locks.
func (e *env) lockName(wl Workload, workers int, impl, tag string, i int) string {
	base := fmt.Sprintf("sqldlm-bench/%s/%s/%s/w%d/%s", e.runID, tag, wl.Name(), workers, impl)
	if wl.Hot {
		return base + "/hot"
	}
	return fmt.Sprintf("%s/%d", base, i)
}

func (e *env) setup(ctx context.Context, wl Workload, workers int, impl, tag string) (s *setupResult, err error) {
	if e.cfg.Vacuum && e.fam.vacuum != "" {
		if err := e.vacuum(ctx); err != nil {
			return nil, err
		}
	}
	s = &setupResult{}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	switch impl {
	case ImplSqldlm:
		nClients := 1
		if wl.Hot {
			nClients = max(min(workers, e.cfg.Procs), 1)
		}
		nodes := e.cellNodes(workers)
		nClients = max(nClients, len(nodes))
		s.counter = &stmtCounter{}
		dbs := make([]*sql.DB, len(nodes))
		for k, d := range nodes {
			db, err := openPoolCounted(d, workers+nClients+2, s.counter)
			if err != nil {
				return nil, err
			}
			s.closers = append(s.closers, func() { db.Close() })
			dbs[k] = db
		}
		clients := make([]*sqldlm.Client, nClients)
		for i := range clients {
			c, err := sqldlm.New(dbs[i%len(dbs)], sqldlm.Config{TTL: e.cfg.TTL, Owner: fmt.Sprintf("sqldlm-bench/%s/%d", e.runID, i)})
			if err != nil {
				return nil, err
			}
			s.closers = append(s.closers, func() { _ = c.Close() })
			clients[i] = c
		}
		mode := sqldlm.Exclusive
		if wl.Shared {
			mode = sqldlm.Shared
		}
		for i := range workers {
			s.workers = append(s.workers, &sqldlmWorker{c: clients[i%nClients], name: e.lockName(wl, workers, impl, tag, i), mode: mode})
		}
		s.primitive = fmt.Sprintf("Client.Lock(%s)+Lock.Release, %d Client(s)", mode, nClients)
	case ImplTwoCommit:
		size := workers + 2
		if e.fam.floorOneConn {
			size = 1
		}
		s.counter = &stmtCounter{}
		type stmts struct{ acq, rel *sql.Stmt }
		var onNode []stmts
		for _, d := range e.cellNodes(workers) {
			db, err := openPoolCounted(d, size, s.counter)
			if err != nil {
				return nil, err
			}
			s.closers = append(s.closers, func() { db.Close() })
			acq, err := db.PrepareContext(ctx, e.fam.floorAcquire)
			if err != nil {
				return nil, err
			}
			rel, err := db.PrepareContext(ctx, e.fam.floorRelease)
			if err != nil {
				acq.Close()
				return nil, err
			}
			s.closers = append(s.closers, func() { acq.Close(); rel.Close() })
			onNode = append(onNode, stmts{acq, rel})
		}
		owner := time.Now().UnixNano()
		for i := range workers {
			st := onNode[i%len(onNode)]
			s.workers = append(s.workers, &twoCommitWorker{acquire: st.acq, release: st.rel, name: e.lockName(wl, workers, impl, tag, i), owner: owner + int64(i)})
		}
		s.primitive = e.fam.floorPrimitive
	case ImplAdvisory:
		a := e.fam.advisory
		db, n, err := openPool(e.d, workers+2)
		if err != nil {
			return nil, err
		}
		s.closers = append(s.closers, func() { db.Close() })
		s.counter = n
		lockQ, unlockQ, prim := a.lock, a.unlock, a.primitive
		if wl.Shared {
			lockQ, unlockQ, prim = a.lockShared, a.unlockShared, a.primitiveShared
		}
		for i := range workers {
			conn, err := db.Conn(ctx)
			if err != nil {
				return nil, err
			}
			s.closers = append(s.closers, func() { conn.Close() })
			lockS, err := conn.PrepareContext(ctx, lockQ)
			if err != nil {
				return nil, err
			}
			unlockS, err := conn.PrepareContext(ctx, unlockQ)
			if err != nil {
				return nil, err
			}
			s.closers = append(s.closers, func() { lockS.Close(); unlockS.Close() })
			s.workers = append(s.workers, &advisoryWorker{lockS: lockS, unlockS: unlockS, key: a.key(e.lockName(wl, workers, impl, tag, i))})
		}
		s.primitive = prim + " on a dedicated connection per worker"
	default:
		return nil, fmt.Errorf("unknown implementation %q", impl)
	}
	return s, nil
}

// sqldlmWorker locks with Client.Lock and releases with Lock.Release.
type sqldlmWorker struct {
	c    *sqldlm.Client
	name string
	mode sqldlm.Mode
	l    *sqldlm.Lock
}

func (w *sqldlmWorker) lock(ctx context.Context) error {
	l, err := w.c.Lock(ctx, w.name, w.mode)
	w.l = l
	return err
}

func (w *sqldlmWorker) unlock(ctx context.Context) error {
	return w.l.Release(ctx)
}

// machine describes the machine the benchmark ran on.
func machine() Machine {
	m := Machine{
		GoVersion:  runtime.Version(),
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		CPUs:       runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.LoadStart = loadAverage()
	return m
}

// loadAverage returns the 1-minute load average, 0 where /proc is missing.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
