//go:build linux

package integration_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/faultproxy"
	"github.com/sqldlm/sqldlm/internal/jepsen"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

// The randomized fault test (RELIABILITY-PLAN §8), in the manner of
// Jepsen: client processes (this test binary re-executed, role
// jepsen-client; see jepsen_child_test.go), each reaching the database
// through its own fault proxy, lock names with a skewed distribution and
// make fenced writes, while a seeded nemesis pauses, kills, partitions,
// delays and disconnects them. Afterwards the checkers of internal/jepsen
// judge the recorded history against the database's journal and audit log.
//
// Environment:
//
//	SQLDLM_JEPSEN_TIME    how long the workload runs per dialect (default 45s: the suite's
//	                      time; nightly or before a release, run 10m)
//	SQLDLM_JEPSEN_SEED    replay a run (the seed is printed)
//	SQLDLM_JEPSEN_FAULTS  comma-separated fault kinds (default all; see jepsenFaults)
//	SQLDLM_JEPSEN_HOLD    how long a fault lasts, "lo,hi" in TTLs (default 0.2,3)
//	SQLDLM_JEPSEN_GAP     the time between faults, "lo,hi" in seconds (default 1,3)
//	SQLDLM_JEPSEN_MIX     the shares of the workers' turns that campaign in the
//	                      election and that take a permit of the semaphore,
//	                      "campaign,permit" (default 0.1,0.1; the rest lock)
//	SQLDLM_JEPSEN_SERVER  "dedicated" (default): a throwaway server of the
//	                      test's own (internal/dbinstance), with the server
//	                      faults; "shared": the shared server through
//	                      internal/testdb, client faults only
//	SQLDLM_JEPSEN_OUT     directory for histories, logs and porcupine's
//	                      visualisation (default a temporary directory)
//	SQLDLM_ALLOW_MUTANT=1 in a binary built with -tags sqldlm_mutant: the
//	                      checkers' verdicts go to summary-<dialect>.json
//	                      instead of failing the test (TestJepsenMutant)
//
// It does not run with -short.
func TestJepsen(t *testing.T) {
	if testing.Short() {
		t.Skip("the randomized fault test takes about 75s per dialect; it runs without -short")
	}
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			newJepsenRun(t, kind, nil).run()
		})
	}
}

// Fault kinds, with the nemesis's weights (RELIABILITY-PLAN §8.4).
type jepsenFault struct {
	kind   string
	weight int
}

var jepsenFaults = []jepsenFault{
	{"pause", 20},     // SIGSTOP a client process, SIGCONT after the hold
	{"kill", 10},      // SIGKILL a client process; a fresh one starts after the hold
	{"partition", 20}, // its proxy stops forwarding until the hold ends
	{"delay", 10},     // its proxy delays every chunk of data
	{"reset", 10},     // its proxy resets every connection
	{"session", 10},   // the server terminates one of the clients' sessions
	// The answer to the next statement on one of its connections is lost
	// after the server ran it (faultproxy.Conn.LoseNextAnswer).
	{"lose-answer", 15},
	// Its proxy swallows PostgreSQL cancel requests for the hold: a
	// statement the client gives up on runs on in the server (on MariaDB,
	// go-sql-driver sends none: the fault is there all the time).
	{"lost-cancel", 10},
	// Dedicated server only:
	{"server-pause", 10}, // SIGSTOP the database server, SIGCONT after the hold
	{"server-crash", 5},  // kill -9 the server, restart it (crash recovery)
	// On a Galera cluster only (TestGaleraJepsen, jepsen_galera_test.go):
	{"node-crash", 10},     // kill -9 a node, restart it after the hold (it rejoins by IST)
	{"node-partition", 10}, // cut a node off from the other two for the hold (a minority)
	{"cluster-crash", 3},   // kill -9 every node, one first; recover from the highest seqno
	// On a PostgreSQL primary + standby only (TestFailoverJepsenPostgres,
	// jepsen_pgfailover_test.go):
	{"promote", 20},     // kill -9 the primary, promote the standby, rebuild a standby
	{"promote-lag", 20}, // the same after the replication stream was cut for the hold
	// Only when named in SQLDLM_JEPSEN_FAULTS (the "clock" profile), and on
	// PostgreSQL: the server's clock jumps 2 x TTL ahead for the hold. The
	// holder-knows-first checker then counts its violations instead of
	// failing: a forward jump expires leases early, as documented.
	{"clock", 5},
}

// serverFaults need a dedicated server; clusterFaults a cluster, each
// only its own topology's (jepsenProfile.kinds).
var (
	serverFaults  = []string{"server-pause", "server-crash", "clock"}
	clusterFaults = []string{"node-crash", "node-partition", "cluster-crash", "promote", "promote-lag"}
)

// jepsenTopology is a run on a cluster instead of one server: a Galera
// cluster (jepsen_galera_test.go) or a PostgreSQL primary with a standby
// (jepsen_pgfailover_test.go).
type jepsenTopology interface {
	profile() jepsenProfile
	// setupDSN creates the run's database and returns a DSN for it
	// through the parent's own proxy, which follows the writer.
	setupDSN(t *testing.T) string
	// slotTarget is the address client slot i's proxy starts with.
	slotTarget(i int) string
	// inject applies one of the topology's faults and heals it.
	inject(r *jepsenRun, kind string, hold time.Duration) string
	// healAll ends every fault of the topology's.
	healAll(r *jepsenRun)
}

// jepsenProfile is what a topology changes of a run.
type jepsenProfile struct {
	label    string
	ttl      time.Duration
	duration time.Duration
	hold     [2]float64 // the default of SQLDLM_JEPSEN_HOLD
	kinds    []string   // its faults of clusterFaults, each injected first (in a seeded order, every other fault)
	without  []string   // default faults it leaves out
	faults   []string   // if not nil, the faults instead of the defaults
}

const jepsenProcs = 4

type jepsenRun struct {
	t        *testing.T
	kind     string
	label    string        // kind, or the Galera case: names the output directory
	ttl      time.Duration // the clients' TTL: jepsenTTL, longer on Galera
	db       *testdb.DB
	out      string
	seed     uint64
	rng      *rand.Rand
	duration time.Duration
	faults   []string
	hold     [2]float64 // a fault lasts U(hold[0], hold[1]) x TTL
	gap      [2]float64 // U(gap[0], gap[1]) seconds pass between faults
	mutant   bool
	appTag   string // PostgreSQL application_name prefix of this run's children
	rec      *jepsen.Recorder
	start    time.Time
	until    int64

	inst *dbinstance.Instance // nil on the shared server and on a cluster
	topo jepsenTopology       // a cluster's run, or nil
	// forced are cluster faults the nemesis injects first (in a seeded
	// order, every other fault), so that each happens in every run.
	forced []string
	// lossWindows are the spans in which a promotion of an asynchronous
	// standby may undo what the old primary acknowledged (see
	// jepsen.ForgiveFailoverLoss); nil everywhere else.
	lossWindows []jepsen.Window
	// outage is the longest span a cluster fault left the database
	// unreachable (a whole-cluster crash until every node was Synced
	// again): a release cannot take effect in it.
	outage time.Duration

	mu        sync.Mutex
	slots     []*jepsenSlot
	procs     []*jepsenProc
	nextProc  int
	baseConns []int64 // MySQL: the parent's own sessions, never killed
	applied   map[string]int
}

type jepsenSlot struct {
	proxy *faultproxy.Proxy
	dsn   string
	cur   *jepsenProc
}

type jepsenProc struct {
	idx    int
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	killed bool
}

// newJepsenRun prepares a run on kind's dedicated or shared server, or, with
// topo, on a cluster.
func newJepsenRun(t *testing.T, kind string, topo jepsenTopology) *jepsenRun {
	r := &jepsenRun{t: t, kind: kind, label: kind, ttl: jepsenTTL, duration: 45 * time.Second, applied: map[string]int{},
		hold: envRange(t, "SQLDLM_JEPSEN_HOLD", [2]float64{0.2, 3}), gap: envRange(t, "SQLDLM_JEPSEN_GAP", [2]float64{1, 3}),
		mutant: os.Getenv("SQLDLM_ALLOW_MUTANT") == "1", topo: topo}
	var pr jepsenProfile
	if topo != nil {
		pr = topo.profile()
		r.label, r.ttl, r.duration = pr.label, pr.ttl, pr.duration
		r.hold = envRange(t, "SQLDLM_JEPSEN_HOLD", pr.hold)
	}
	if v := os.Getenv("SQLDLM_JEPSEN_TIME"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, "SQLDLM_JEPSEN_TIME")
		r.duration = d
	}
	r.seed = rand.Uint64()
	if v := os.Getenv("SQLDLM_JEPSEN_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		require.NoError(t, err, "SQLDLM_JEPSEN_SEED")
		r.seed = s
	}
	r.rng = rand.New(rand.NewPCG(r.seed, 0x5eed))
	dedicated := os.Getenv("SQLDLM_JEPSEN_SERVER") != "shared" && topo == nil
	// A cluster fault is only its own topology's.
	foreign := func(f string) bool { return slices.Contains(clusterFaults, f) && !slices.Contains(pr.kinds, f) }
	for _, f := range jepsenFaults {
		if f.kind != "clock" && (dedicated || !slices.Contains(serverFaults, f.kind)) &&
			!foreign(f.kind) && !slices.Contains(pr.without, f.kind) {
			r.faults = append(r.faults, f.kind)
		}
	}
	if v := os.Getenv("SQLDLM_JEPSEN_FAULTS"); v != "" {
		r.faults = strings.Split(v, ",")
	}
	if pr.faults != nil {
		r.faults = pr.faults
	}
	for _, f := range r.faults {
		known := slices.ContainsFunc(jepsenFaults, func(k jepsenFault) bool { return k.kind == f })
		require.True(t, known, "SQLDLM_JEPSEN_FAULTS: unknown fault %q", f)
	}
	r.faults = slices.DeleteFunc(r.faults, func(f string) bool {
		return (!dedicated && slices.Contains(serverFaults, f)) || (f == "clock" && kind != testdb.Postgres) || foreign(f)
	})
	if topo != nil {
		for _, i := range r.rng.Perm(len(pr.kinds)) {
			if slices.Contains(r.faults, pr.kinds[i]) {
				r.forced = append(r.forced, pr.kinds[i])
			}
		}
	}
	if dedicated {
		began := time.Now()
		r.inst = dbinstance.Start(t, kind, dbinstance.Options{FakeTime: slices.Contains(r.faults, "clock")})
		t.Logf("%s: throwaway server at %s ready in %s", kind, r.inst.Addr(), time.Since(began).Round(time.Millisecond))
	}
	r.out = os.Getenv("SQLDLM_JEPSEN_OUT")
	if r.out == "" {
		r.out = t.TempDir()
	}
	r.out = filepath.Join(r.out, r.label)
	require.NoError(t, os.MkdirAll(r.out, 0o755))
	r.appTag = fmt.Sprintf("sqldlm-jepsen-%d-", rand.Uint32())
	campaign, permit, err := jepsenMix()
	require.NoError(t, err)
	t.Logf("%s: seed %d (SQLDLM_JEPSEN_SEED=%d replays it), %s of workload, TTL %s, faults %v held U(%g, %g) x TTL every U(%g, %g)s, %g of turns campaign and %g take a permit, output in %s",
		r.label, r.seed, r.seed, r.duration, r.ttl, r.faults, r.hold[0], r.hold[1], r.gap[0], r.gap[1], campaign, permit, r.out)
	return r
}

// envRange reads "lo,hi" from the environment variable name, or returns def.
func envRange(t *testing.T, name string, def [2]float64) [2]float64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	a, b, _ := strings.Cut(v, ",")
	lo, err1 := strconv.ParseFloat(a, 64)
	hi, err2 := strconv.ParseFloat(b, 64)
	require.True(t, err1 == nil && err2 == nil && 0 <= lo && lo <= hi, "%s=%q: want lo,hi", name, v)
	return [2]float64{lo, hi}
}

func (r *jepsenRun) run() {
	t := r.t
	r.db = r.setupDB()
	f, err := os.Create(filepath.Join(r.out, "hist-parent.jsonl"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	r.rec = jepsen.NewRecorder(f)

	r.start = time.Now()
	r.until = jepsen.Mono() + int64(r.duration)
	u, err := url.Parse(r.db.DSN)
	require.NoError(t, err)
	for i := range jepsenProcs {
		target := u.Host
		if r.topo != nil {
			target = r.topo.slotTarget(i)
		}
		p, err := faultproxy.New(target)
		require.NoError(t, err)
		t.Cleanup(p.Close)
		// A lost answer hits an execution, not a MySQL statement's preparation.
		p.ShowPreparedText(r.kind == testdb.MySQL)
		cu := *u
		cu.Host = p.Addr()
		if r.kind == testdb.Postgres {
			qv := cu.Query()
			qv.Set("application_name", r.appTag+strconv.Itoa(i))
			cu.RawQuery = qv.Encode()
		}
		r.slots = append(r.slots, &jepsenSlot{proxy: p, dsn: cu.String()})
	}
	// Heal everything even if the test fails half-way: no child stays
	// stopped, no proxy paused.
	t.Cleanup(r.healAll)
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, p := range r.procs {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	for _, s := range r.slots {
		r.startProc(s)
	}

	faults := r.nemesis()
	r.healAll()
	r.waitChildren()
	workload := time.Since(r.start)

	// Final phase: everything healed, wait 2 x TTL + the reap interval;
	// then a fresh client must get every name within TTL + 1s.
	final := newClient(t, r.db, sqldlm.Config{TTL: r.ttl, ReapInterval: jepsenReap, Owner: "jepsen-final", Audit: true})
	time.Sleep(2*r.ttl + jepsenReap) // the recovery bound being checked, not synchronisation
	var liveness []string
	ctx := context.Background()
	for i := range jepsenNames {
		name := jepsenName(i)
		id := int64(i + 1)
		r.rec.Record(jepsen.Event{P: 0, W: 0, Op: id, T: jepsen.Invoke, F: jepsen.Acquire, Name: name, Mode: jepsen.Exclusive})
		lctx, cancel := context.WithTimeout(ctx, r.ttl+time.Second)
		l, err := final.Lock(lctx, name, sqldlm.Exclusive)
		cancel()
		if err != nil {
			r.rec.Record(jepsen.Event{P: 0, W: 0, Op: id, T: jepsen.Fail, F: jepsen.Acquire, Name: name, Err: err.Error()})
			liveness = append(liveness, fmt.Sprintf("liveness: a fresh client did not get %q within TTL+1s: %v", name, err))
			continue
		}
		e := jepsen.Event{P: 0, W: 0, Op: id, T: jepsen.OK, F: jepsen.Acquire, Name: name, Token: l.Token(), Mode: jepsen.Exclusive}
		if tk := l.Takeover(); tk != nil {
			e.TookLease, e.TookToken = tk.LeaseID, tk.Token
		}
		r.rec.Record(e)
		defer l.Release(ctx)
	}
	liveness = append(liveness, r.finalCoord(ctx, final, jepsenNames+1)...)
	for _, c := range []struct{ what, query string }{
		{"waiter rows", `SELECT COUNT(*) FROM sqldlm_waiters w WHERE EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = w.lease_id)`},
		{"leases of dead client processes", `SELECT COUNT(*) FROM sqldlm_leases WHERE owner <> 'jepsen-final'`},
	} {
		var n int
		require.NoError(t, r.db.QueryRowContext(ctx, c.query).Scan(&n))
		if n != 0 {
			liveness = append(liveness, fmt.Sprintf("liveness: %d %s left after TTL + reap interval", n, c.what))
		}
	}
	// Waiter rows of leases that no longer exist: nothing would ever delete
	// them (the reaper goes by lease). MariaDB's sqldlm_acquire once left
	// such rows (TestMySQLWaiterOfDeletedLease guards the fix).
	var orphans int
	require.NoError(t, r.db.QueryRowContext(ctx,
		`SELECT COUNT(*) FROM sqldlm_waiters w WHERE NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = w.lease_id)`).Scan(&orphans))
	if orphans > 0 {
		liveness = append(liveness, fmt.Sprintf("liveness: %d waiter rows of leases that no longer exist", orphans))
	}
	if len(liveness) > 0 || orphans > 0 {
		r.dumpLeftovers(ctx)
	}
	require.NoError(t, r.rec.Err())

	r.check(final, faults, workload, liveness)
}

// finalCoord is the final phase's election and semaphore: the fresh client
// must be elected, and then get every permit, each within TTL + 1s. It
// records them as process 0's operations from id on, resigns and releases
// them, and returns the liveness violations.
func (r *jepsenRun) finalCoord(ctx context.Context, final *sqldlm.Client, id int) []string {
	var liveness []string
	// take records one grant; get returns the lock name, token and release.
	take := func(coord, group, what string, get func(context.Context) (string, int64, func(context.Context) error, error)) {
		inv := jepsen.Event{P: 0, W: 0, Op: int64(id), T: jepsen.Invoke, F: jepsen.Acquire, Mode: jepsen.Exclusive, Coord: coord, Group: group}
		id++
		if coord == jepsen.Election {
			inv.Name = sqldlm.ElectionPrefix + group
		}
		r.rec.Record(inv)
		cctx, cancel := context.WithTimeout(ctx, r.ttl+time.Second)
		name, token, release, err := get(cctx)
		cancel()
		if err != nil {
			r.rec.Record(jepsen.Event{P: 0, W: 0, Op: inv.Op, T: jepsen.Fail, F: jepsen.Acquire, Err: err.Error()})
			liveness = append(liveness, fmt.Sprintf("liveness: a fresh client did not get %s %q's %s within TTL+1s: %v", coord, group, what, err))
			return
		}
		r.rec.Record(jepsen.Event{P: 0, W: 0, Op: inv.Op, T: jepsen.OK, F: jepsen.Acquire, Name: name, Token: token, Mode: jepsen.Exclusive})
		r.t.Cleanup(func() { _ = release(context.Background()) })
	}
	take(jepsen.Election, jepsenElection, "leadership", func(ctx context.Context) (string, int64, func(context.Context) error, error) {
		ld, err := final.Campaign(ctx, jepsenElection, "jepsen-final")
		if err != nil {
			return "", 0, nil, err
		}
		return sqldlm.ElectionPrefix + jepsenElection, ld.Term(), ld.Resign, nil
	})
	sem := final.Semaphore(jepsenSemaphore, jepsenSemaphoreLimit)
	for k := range jepsenSemaphoreLimit {
		take(jepsen.Semaphore, jepsenSemaphore, fmt.Sprintf("permit %d of %d", k+1, jepsenSemaphoreLimit),
			func(ctx context.Context) (string, int64, func(context.Context) error, error) {
				p, err := sem.Acquire(ctx)
				if err != nil {
					return "", 0, nil, err
				}
				return sqldlm.SemaphorePrefix + jepsenSemaphore + "#" + strconv.Itoa(p.Slot()), p.Token(), p.Release, nil
			})
	}
	return liveness
}

// mutantSummary returns the violations per checker a run with mutant set
// wrote.
func (r *jepsenRun) mutantSummary() map[string]int {
	data, err := os.ReadFile(filepath.Join(filepath.Dir(r.out), "summary-"+r.label+".json"))
	require.NoError(r.t, err)
	var summary map[string]int
	require.NoError(r.t, json.Unmarshal(data, &summary))
	return summary
}

// dumpLeftovers logs the waiter rows and leases left after the final
// phase, for diagnosis.
func (r *jepsenRun) dumpLeftovers(ctx context.Context) {
	rows, err := r.db.QueryContext(ctx, `SELECT w.name, w.lease_id, w.request_id, w.mode,
		(SELECT COUNT(*) FROM sqldlm_leases l WHERE l.id = w.lease_id) FROM sqldlm_waiters w`)
	if err != nil {
		r.t.Logf("%s: leftover waiters: %v", r.kind, err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var name, mode string
		var lease, req, leases int64
		if err := rows.Scan(&name, &lease, &req, &mode, &leases); err != nil {
			r.t.Logf("%s: leftover waiters: %v", r.kind, err)
			return
		}
		r.t.Logf("%s: leftover waiter row: name %q lease %d request %d mode %s; lease rows with its id: %d", r.kind, name, lease, req, mode, leases)
	}
}

// setupDB makes the test's database: sqldlm's schema, the cells (one per
// name) and the journal.
func (r *jepsenRun) setupDB() *testdb.DB {
	t := r.t
	ctx := context.Background()
	var db *testdb.DB
	switch {
	case r.topo != nil:
		db = testdb.Reopen(t, r.kind, r.topo.setupDSN(t))
		_, err := migrations.Up(ctx, db.DB, db.Dialect)
		require.NoError(t, err)
	case r.inst != nil:
		db = testdb.Reopen(t, r.kind, r.inst.DSN())
		_, err := migrations.Up(ctx, db.DB, db.Dialect)
		require.NoError(t, err)
	default:
		db = testdb.OpenMigrated(t, r.kind)
	}
	for _, stmt := range []string{
		`CREATE TABLE cells (name VARCHAR(64) PRIMARY KEY, counter BIGINT NOT NULL, last_token BIGINT NOT NULL)`,
		`CREATE TABLE journal (op_id BIGINT NOT NULL, seq INT NOT NULL, name VARCHAR(64) NOT NULL, token BIGINT NOT NULL,
			lease_id BIGINT NOT NULL, client VARCHAR(64) NOT NULL, counter BIGINT NOT NULL, mode VARCHAR(16) NOT NULL)`,
		// The election's and the semaphore's (jepsen_coord_child_test.go).
		`CREATE TABLE coord_cells (grp VARCHAR(64) PRIMARY KEY, counter BIGINT NOT NULL)`,
		`CREATE TABLE coord_journal (op_id BIGINT NOT NULL, seq INT NOT NULL, coord VARCHAR(16) NOT NULL, grp VARCHAR(64) NOT NULL,
			name VARCHAR(128) NOT NULL, token BIGINT NOT NULL, lease_id BIGINT NOT NULL, client VARCHAR(64) NOT NULL, counter BIGINT NOT NULL)`,
	} {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err)
	}
	for i := range jepsenNames {
		_, err := db.ExecContext(ctx, q(r.kind, `INSERT INTO cells (name, counter, last_token) VALUES (?, 0, 0)`), jepsenName(i))
		require.NoError(t, err)
	}
	for _, g := range []string{jepsenElection, jepsenSemaphore} {
		_, err := db.ExecContext(ctx, q(r.kind, `INSERT INTO coord_cells (grp, counter) VALUES (?, 0)`), g)
		require.NoError(t, err)
	}
	if r.kind == testdb.MySQL {
		// The parent's own sessions on the test database, which the
		// session-kill fault must spare.
		db.SetMaxIdleConns(1)
		rows, err := db.QueryContext(ctx, `SELECT id FROM information_schema.processlist WHERE db = DATABASE()`)
		require.NoError(t, err)
		for rows.Next() {
			var id int64
			require.NoError(t, rows.Scan(&id))
			r.baseConns = append(r.baseConns, id)
		}
		require.NoError(t, rows.Err())
		rows.Close()
	}
	return db
}

// startProc starts a fresh client process in slot s.
func (r *jepsenRun) startProc(s *jepsenSlot) {
	t := r.t
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nextProc++
	idx := r.nextProc
	logf, err := os.Create(filepath.Join(r.out, fmt.Sprintf("child-%d.log", idx)))
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		childRoleEnv+"="+jepsenRole, childDSNEnv+"="+s.dsn, childKindEnv+"="+r.kind,
		jepsenProcEnv+"="+strconv.Itoa(idx),
		jepsenHistEnv+"="+filepath.Join(r.out, fmt.Sprintf("hist-%d.jsonl", idx)),
		jepsenSeedEnv+"="+strconv.FormatUint(r.seed+uint64(idx), 10),
		jepsenUntilEnv+"="+strconv.FormatInt(r.until, 10), jepsenTTLEnv+"="+r.ttl.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(t, cmd.Start())
	p := &jepsenProc{idx: idx, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	r.procs = append(r.procs, p)
	s.cur = p
}

// nemesis injects one fault at a time, after a 2s warm-up, until the
// workload's end: sleep U(1, 3)s (SQLDLM_JEPSEN_GAP), pick a fault by weight, hold it for
// U(0.2, 3) x TTL (SQLDLM_JEPSEN_HOLD), heal it. It returns what it did.
func (r *jepsenRun) nemesis() []string {
	var log []string
	var total int
	weights := map[string]int{}
	for _, f := range jepsenFaults {
		if slices.Contains(r.faults, f.kind) {
			weights[f.kind] = f.weight
			total += f.weight
		}
	}
	require.NotZero(r.t, total, "no known fault in %v", r.faults)
	wait := func(d time.Duration) bool {
		end := jepsen.Mono() + int64(d)
		if end > r.until {
			time.Sleep(time.Duration(max(r.until-jepsen.Mono(), 0)))
			return false
		}
		time.Sleep(d) // the nemesis's schedule, not synchronisation
		return true
	}
	if !wait(2 * time.Second) {
		return log
	}
	for pick := 0; ; pick++ {
		if !wait(time.Duration((r.gap[0] + (r.gap[1]-r.gap[0])*r.rng.Float64()) * float64(time.Second))) {
			return log
		}
		n := r.rng.IntN(total)
		var kind string
		for _, f := range jepsenFaults {
			if w := weights[f.kind]; n < w {
				kind = f.kind
				break
			} else {
				n -= w
			}
		}
		if len(r.forced) > 0 && pick%2 == 0 {
			kind, r.forced = r.forced[0], r.forced[1:]
		}
		s := r.slots[r.rng.IntN(len(r.slots))]
		hold := time.Duration((r.hold[0] + (r.hold[1]-r.hold[0])*r.rng.Float64()) * float64(r.ttl))
		at := time.Since(r.start).Round(time.Millisecond)
		desc := r.inject(kind, s, hold)
		log = append(log, fmt.Sprintf("%s %s", at, desc))
		r.mu.Lock()
		r.applied[kind]++
		r.mu.Unlock()
	}
}

// inject applies one fault to slot s and heals it after hold.
func (r *jepsenRun) inject(kind string, s *jepsenSlot, hold time.Duration) string {
	p := s.cur
	switch kind {
	case "pause":
		_ = p.cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(hold) // the fault's duration
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		return fmt.Sprintf("paused p%d for %s", p.idx, hold.Round(time.Millisecond))
	case "kill":
		_ = p.cmd.Process.Kill()
		<-p.exited
		r.rec.Record(jepsen.Event{P: p.idx, T: jepsen.Killed})
		r.mu.Lock()
		p.killed = true
		r.mu.Unlock()
		time.Sleep(hold) // the fault's duration
		if jepsen.Mono() < r.until-int64(2*time.Second) {
			r.startProc(s)
			return fmt.Sprintf("killed p%d, started p%d after %s", p.idx, s.cur.idx, hold.Round(time.Millisecond))
		}
		return fmt.Sprintf("killed p%d", p.idx)
	case "partition":
		s.proxy.Pause()
		time.Sleep(hold) // the fault's duration
		s.proxy.Resume()
		return fmt.Sprintf("partitioned p%d for %s", p.idx, hold.Round(time.Millisecond))
	case "delay":
		d := time.Duration((0.05 + 0.5*r.rng.Float64()) * float64(r.ttl))
		s.proxy.Delay(d)
		time.Sleep(hold) // the fault's duration
		s.proxy.Delay(0)
		return fmt.Sprintf("delayed p%d's traffic by %s for %s", p.idx, d.Round(time.Millisecond), hold.Round(time.Millisecond))
	case "reset":
		s.proxy.ResetAll()
		return fmt.Sprintf("reset p%d's connections", p.idx)
	case "session":
		return r.killSession(s)
	case "lose-answer":
		var open []*faultproxy.Conn
		for _, c := range s.proxy.Conns() {
			if !c.Closed() {
				open = append(open, c)
			}
		}
		if len(open) == 0 {
			return fmt.Sprintf("no connection of p%d to lose an answer on", p.idx)
		}
		c := open[r.rng.IntN(len(open))]
		trap := c.LoseNextAnswer()
		select {
		case <-trap.Fired():
			return fmt.Sprintf("lost the answer to a statement of p%d", p.idx)
		case <-time.After(hold):
			c.Disarm()
			return fmt.Sprintf("armed a lost answer on p%d; no statement within %s", p.idx, hold.Round(time.Millisecond))
		}
	case "lost-cancel":
		// Another session holds a name's row for the hold, so that the
		// clients' statements on it wait in the server and their callers
		// give up on some of them.
		s.proxy.SwallowCancels(true)
		before := s.proxy.Cancels()
		name := jepsenName(r.rng.IntN(3))
		unblock := r.blockName(name)
		time.Sleep(hold) // the fault's duration
		unblock()
		s.proxy.SwallowCancels(false)
		return fmt.Sprintf("held %q's row and swallowed %d cancel requests of p%d over %s", name, s.proxy.Cancels()-before, p.idx, hold.Round(time.Millisecond))
	case "server-pause":
		r.inst.Pause()
		time.Sleep(hold) // the fault's duration
		r.inst.Resume()
		return fmt.Sprintf("paused the server for %s", hold.Round(time.Millisecond))
	case "server-crash":
		r.inst.Crash()
		began := time.Now()
		if err := r.inst.Start(); err != nil {
			r.t.Errorf("restarting the server after a crash: %v", err)
		}
		return fmt.Sprintf("crashed the server; it was back after %s", time.Since(began).Round(time.Millisecond))
	case "node-crash", "node-partition", "cluster-crash", "promote", "promote-lag":
		return r.topo.inject(r, kind, hold)
	case "clock":
		jump := 2 * r.ttl
		if err := r.inst.SetClockOffset(jump); err != nil {
			r.t.Errorf("clock jump: %v", err)
		}
		time.Sleep(hold) // the fault's duration
		if err := r.inst.SetClockOffset(0); err != nil {
			r.t.Errorf("clock jump back: %v", err)
		}
		return fmt.Sprintf("moved the server's clock %s ahead for %s", jump, hold.Round(time.Millisecond))
	}
	r.t.Fatalf("unknown fault %q", kind)
	return ""
}

// blockName locks name's row in sqldlm_locks (if it exists) in a
// transaction of the parent's, until the returned function rolls it back.
func (r *jepsenRun) blockName(name string) func() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := r.db.BeginTx(context.Background(), &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		r.t.Logf("%s: blocking %q: %v", r.kind, name, err)
		return func() {}
	}
	rows, err := tx.QueryContext(ctx, q(r.kind, `SELECT name FROM sqldlm_locks WHERE name = ? FOR UPDATE`), name)
	if err == nil {
		for rows.Next() {
		}
		err = rows.Err()
		rows.Close()
	}
	if err != nil {
		r.t.Logf("%s: blocking %q: %v", r.kind, name, err)
	}
	return func() { _ = tx.Rollback() }
}

// killSession makes the server end one database session of the children:
// on PostgreSQL, one of slot s's process (by application_name); on MySQL,
// any of them (the test database's sessions other than the parent's).
func (r *jepsenRun) killSession(s *jepsenSlot) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if r.kind == testdb.Postgres {
		app := r.appTag + strconv.Itoa(slices.Index(r.slots, s))
		var n int
		err := r.db.QueryRowContext(ctx, `SELECT COUNT(pg_terminate_backend(pid)) FROM (
			SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY random() LIMIT 1) s`, app).Scan(&n)
		if err != nil {
			return fmt.Sprintf("session kill on p%d failed: %v", s.cur.idx, err)
		}
		return fmt.Sprintf("terminated %d session of p%d", n, s.cur.idx)
	}
	rows, err := r.db.QueryContext(ctx, `SELECT id FROM information_schema.processlist WHERE db = DATABASE() AND id <> CONNECTION_ID()`)
	if err != nil {
		return fmt.Sprintf("session kill failed: %v", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if rows.Scan(&id) == nil && !slices.Contains(r.baseConns, id) {
			ids = append(ids, id)
		}
	}
	rows.Close()
	if len(ids) == 0 {
		return "no client session to kill"
	}
	id := ids[r.rng.IntN(len(ids))]
	// KILL takes no placeholder; id is a number the server gave.
	if _, err := r.db.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(id, 10)); err != nil {
		return fmt.Sprintf("KILL CONNECTION %d failed: %v", id, err)
	}
	return fmt.Sprintf("killed session %d", id)
}

// healAll resumes every process, proxy and the server, or heals the cluster.
func (r *jepsenRun) healAll() {
	if r.topo != nil {
		r.topo.healAll(r)
	}
	if r.inst != nil {
		r.inst.Resume()
		if slices.Contains(r.faults, "clock") {
			_ = r.inst.SetClockOffset(0)
		}
		if !r.inst.Running() {
			if err := r.inst.Start(); err != nil {
				r.t.Errorf("restarting the server: %v", err)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.procs {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
	}
	for _, s := range r.slots {
		s.proxy.Resume()
		s.proxy.Delay(0)
		s.proxy.SwallowCancels(false)
		for _, c := range s.proxy.Conns() {
			c.Disarm()
		}
	}
}

// waitChildren waits for the client processes to finish their last
// operations and exit.
func (r *jepsenRun) waitChildren() {
	r.mu.Lock()
	procs := slices.Clone(r.procs)
	r.mu.Unlock()
	deadline := time.After(60 * time.Second)
	for _, p := range procs {
		select {
		case <-p.exited:
			if p.err != nil && !p.killed {
				r.t.Errorf("client process p%d: %v (log in %s), its last lines:\n%s", p.idx, p.err, r.out, r.childLogTail(p.idx))
			}
		case <-deadline:
			r.t.Errorf("client process p%d did not exit within 60s of the workload's end", p.idx)
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
}

// childLogTail returns the last lines of client process idx's log, which
// the test's temporary directory takes with it.
func (r *jepsenRun) childLogTail(idx int) string {
	data, err := os.ReadFile(filepath.Join(r.out, fmt.Sprintf("child-%d.log", idx)))
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// ownerProc returns the process of a client owner "p<proc>.c<client>", or 0.
func ownerProc(owner string) int {
	var p, c int
	if n, err := fmt.Sscanf(owner, "p%d.c%d", &p, &c); err != nil || n != 2 {
		return 0
	}
	return p
}

// check runs the checkers and reports.
func (r *jepsenRun) check(final *sqldlm.Client, faults []string, workload time.Duration, liveness []string) {
	t := r.t
	ctx := context.Background()
	paths, err := filepath.Glob(filepath.Join(r.out, "hist-*.jsonl"))
	require.NoError(t, err)
	events, err := jepsen.ReadFiles(paths...)
	require.NoError(t, err)
	ops := jepsen.Ops(events)

	audit, err := final.AuditLog(ctx, sqldlm.AuditFilter{})
	require.NoError(t, err)
	// The audit log's times are the server's clock, this machine's wall
	// clock: mapped onto the history's monotonic clock.
	wallToMono := time.Now().UnixNano() - jepsen.Mono()
	var auditRows []jepsen.AuditRow
	grants := 0
	for _, a := range audit {
		auditRows = append(auditRows, jepsen.AuditRow{ID: a.ID, Event: a.Event, Name: a.Name, Token: a.Token, Lease: a.LeaseID, Mode: a.Mode.String(),
			Detail: a.Detail, At: a.At.UnixNano() - wallToMono, P: ownerProc(a.Owner)})
		if a.Event == "grant" || a.Event == "upgrade" {
			grants++
		}
	}
	var rows []jepsen.JournalRow
	jr, err := r.db.QueryContext(ctx, `SELECT op_id, seq, name, token, lease_id, client, counter, mode FROM journal`)
	require.NoError(t, err)
	for jr.Next() {
		var x jepsen.JournalRow
		require.NoError(t, jr.Scan(&x.OpID, &x.Seq, &x.Name, &x.Token, &x.Lease, &x.Client, &x.Counter, &x.Mode))
		rows = append(rows, x)
	}
	require.NoError(t, jr.Err())
	jr.Close()
	cells := r.readCells(ctx, `SELECT name, counter FROM cells`)
	coordRows := r.readCoord(ctx)
	coordCells := r.readCells(ctx, `SELECT grp, counter FROM coord_cells`)

	// A hold must end within the longest fault plus a TTL and two reap
	// intervals of its Release (or of its grant, for a grant no caller
	// learnt of), plus the longest outage of the whole cluster; leaked and
	// ghost holds last until their client closes.
	r.mu.Lock()
	outage := r.outage
	r.mu.Unlock()
	holdBound := time.Duration(r.hold[1]*float64(r.ttl)) + r.ttl + 2*jepsenReap + 2*time.Second + outage
	checkStart := time.Now()
	holder, takeovers := jepsen.CheckHolderKnowsFirst(events, ops, auditRows)
	// After promotions of an asynchronous standby: what the old primary
	// acknowledged after the standby last had everything, and lost, is
	// not judged as lost (linearizability and the holder check still see
	// it).
	judged, undone := jepsen.ForgiveFailoverLoss(ops, rows, coordRows, auditRows, r.lossWindows)
	verdicts := map[string][]string{
		"linearizable": jepsen.CheckLinearizable(ops, 30*time.Second, filepath.Join(r.out, "porcupine.html")),
		"journal":      jepsen.CheckJournal(judged, rows, cells),
		"elections":    jepsen.CheckElections(judged, coordRows, map[string]int64{jepsenElection: coordCells[jepsenElection]}),
		"semaphores": jepsen.CheckSemaphores(judged, coordRows, map[string]int64{jepsenSemaphore: coordCells[jepsenSemaphore]},
			map[string]int{jepsenSemaphore: jepsenSemaphoreLimit}),
		"tokens":   jepsen.CheckTokens(auditRows, judged),
		"holder":   holder,
		"liveness": liveness,
		"releases": jepsen.CheckReleases(judged, auditRows, r.until-int64(15*time.Second), holdBound),
		"ghosts":   jepsen.CheckGhosts(ops, auditRows, r.until-int64(15*time.Second), holdBound),
	}
	checking := time.Since(checkStart)

	// Report.
	counts := map[string]int{}
	for _, o := range ops {
		k := o.F + " " + o.Status
		if o.Coord != "" {
			k = o.Coord + " " + k
		}
		counts[k]++
	}
	var keys []string
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%d", k, counts[k])
	}
	lost, ended := 0, 0
	kinds := map[string]int{}
	for _, e := range events {
		switch e.T {
		case jepsen.Count:
			kinds[e.F] += int(e.Op)
		case jepsen.Lost:
			lost++
		case jepsen.LeaseEnd:
			ended++
		}
	}
	var rowsExcl int
	for _, x := range rows {
		if x.Mode == jepsen.Exclusive {
			rowsExcl++
		}
	}
	t.Logf("%s: seed %d; workload %s with %d processes started, %d faults %v; %d operations:%s",
		r.label, r.seed, workload.Round(time.Millisecond), r.nextProc, len(faults), r.applied, len(ops), b.String())
	t.Logf("%s: operations run per kind (processes that exited): %v", r.label, kinds)
	t.Logf("%s: %d journal rows (%d exclusive), %d audit grants, %d locks lost, %d leases ended, %d handovers of dead holders' locks checked; checking took %s",
		r.label, len(rows), rowsExcl, grants, lost, ended, takeovers.Total(), checking.Round(time.Millisecond))
	coordKinds := map[string]int{}
	for _, x := range coordRows {
		coordKinds[x.Coord]++
	}
	t.Logf("%s: election %q and semaphore %q (limit %d): %d and %d coordination journal rows, at most %v held at once; handovers checked: %+v",
		r.label, jepsenElection, jepsenSemaphore, jepsenSemaphoreLimit, coordKinds[jepsen.Election], coordKinds[jepsen.Semaphore],
		jepsen.MostHeld(coordRows), takeovers)
	for _, f := range faults {
		t.Logf("%s: nemesis: %s", r.label, f)
	}
	if r.lossWindows != nil {
		t.Logf("%s: lost in the asynchronous failovers (acknowledged by the old primary after the standby last had everything): %d fenced transactions, %d grants (and %d releases of them)",
			r.label, undone.Fences, undone.Grants, undone.Releases)
	}

	if r.mutant {
		summary := map[string]int{}
		for k, v := range verdicts {
			summary[k] = len(v)
			for i, s := range v {
				if i < 5 {
					t.Logf("%s: mutant: %s: %s", r.label, k, s)
				}
			}
		}
		data, err := json.Marshal(summary)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(filepath.Dir(r.out), "summary-"+r.label+".json"), data, 0o644))
		return
	}
	if slices.Contains(r.faults, "clock") {
		t.Logf("%s: holder knows first: %d violations with server clock jumps (expected: a forward jump expires leases early; fencing must still hold)",
			r.label, len(verdicts["holder"]))
		delete(verdicts, "holder")
		// The release and ghost checks place audit rows on the history's
		// clock through the server's wall clock, which the fault moves.
		t.Logf("%s: releases, ghosts: %d, %d violations with server clock jumps (not judged: the audit log's times are the server's clock)",
			r.label, len(verdicts["releases"]), len(verdicts["ghosts"]))
		delete(verdicts, "releases")
		delete(verdicts, "ghosts")
	}
	for _, k := range []string{"linearizable", "journal", "elections", "semaphores", "tokens", "holder", "liveness", "releases", "ghosts"} {
		for i, s := range verdicts[k] {
			if i == 20 {
				t.Errorf("%s: %s: ... %d more", r.label, k, len(verdicts[k])-20)
				break
			}
			t.Errorf("%s: %s: %s", r.label, k, s)
		}
	}
	if t.Failed() {
		t.Logf("%s: histories, child logs and any porcupine visualisation are in %s (set SQLDLM_JEPSEN_OUT to keep them)", r.label, r.out)
	}
}

// readCoord reads the coordination journal (jepsen_coord_child_test.go).
func (r *jepsenRun) readCoord(ctx context.Context) []jepsen.CoordRow {
	t := r.t
	var rows []jepsen.CoordRow
	jr, err := r.db.QueryContext(ctx, `SELECT op_id, seq, coord, grp, name, token, lease_id, client, counter FROM coord_journal`)
	require.NoError(t, err)
	defer jr.Close()
	for jr.Next() {
		var x jepsen.CoordRow
		require.NoError(t, jr.Scan(&x.OpID, &x.Seq, &x.Coord, &x.Group, &x.Name, &x.Token, &x.Lease, &x.Client, &x.Counter))
		rows = append(rows, x)
	}
	require.NoError(t, jr.Err())
	return rows
}

// readCells reads the final counters of cells or coord_cells: query
// selects a name and a counter.
func (r *jepsenRun) readCells(ctx context.Context, query string) map[string]int64 {
	t := r.t
	cells := map[string]int64{}
	cr, err := r.db.QueryContext(ctx, query)
	require.NoError(t, err)
	defer cr.Close()
	for cr.Next() {
		var n string
		var c int64
		require.NoError(t, cr.Scan(&n, &c))
		cells[n] = c
	}
	require.NoError(t, cr.Err())
	return cells
}

// noteOutage records a span in which a cluster fault left the database
// unreachable.
func (r *jepsenRun) noteOutage(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outage = max(r.outage, d)
}
