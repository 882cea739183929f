//go:build linux

package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/jepsen"
	"github.com/sqldlm/sqldlm/internal/testknobs"
)

// Environment of a jepsen-client child process (see jepsen_test.go).
const (
	jepsenRole     = "jepsen-client"
	jepsenProcEnv  = "SQLDLM_JEPSEN_PROC"  // the process's number in the history
	jepsenHistEnv  = "SQLDLM_JEPSEN_HIST"  // the history file to append to
	jepsenSeedEnv  = "SQLDLM_JEPSEN_CSEED" // the child's random seed
	jepsenUntilEnv = "SQLDLM_JEPSEN_UNTIL" // CLOCK_MONOTONIC ns at which to stop
	jepsenTTLEnv   = "SQLDLM_JEPSEN_CTTL"  // the clients' TTL, when not jepsenTTL
)

// Workload constants (RELIABILITY-PLAN §8.2). Every duration of the
// workload is a multiple of the TTL, which is jepsenTTL except on a Galera
// cluster (the run's ttl, passed in SQLDLM_JEPSEN_CTTL).
const (
	jepsenTTL          = 2 * time.Second
	jepsenReap         = time.Second
	jepsenNames        = 8
	jepsenClients      = 2 // sqldlm clients per process
	jepsenWorkers      = 2 // goroutines per client
	jepsenReleaseLimit = time.Second
)

// The workload's election and semaphore (issue 16): instead of a lock, a
// worker's turn campaigns in the election with one share, or takes a
// permit of the semaphore with the other (jepsenMix), and fences 1-3
// transactions with it as with a lock. Each such transaction adds one to
// the group's coord_cells row and journals itself in coord_journal, which
// jepsen.CheckElections and CheckSemaphores judge.
const (
	jepsenElection       = "leader"
	jepsenSemaphore      = "slots"
	jepsenSemaphoreLimit = 2
)

// jepsenMixEnv sets the shares of the workers' turns that campaign and
// that take a permit, "campaign,permit" (default 0.1,0.1).
const jepsenMixEnv = "SQLDLM_JEPSEN_MIX"

// jepsenMix returns the shares SQLDLM_JEPSEN_MIX sets.
func jepsenMix() (campaign, permit float64, err error) {
	v := os.Getenv(jepsenMixEnv)
	if v == "" {
		return 0.1, 0.1, nil
	}
	a, b, _ := strings.Cut(v, ",")
	campaign, err1 := strconv.ParseFloat(a, 64)
	permit, err2 := strconv.ParseFloat(b, 64)
	if err1 != nil || err2 != nil || campaign < 0 || permit < 0 || campaign+permit > 1 {
		return 0, 0, fmt.Errorf("%s=%q: want two shares adding up to at most 1, campaign,permit", jepsenMixEnv, v)
	}
	return campaign, permit, nil
}

// openRetrying opens rawDSN, asking again for up to timeout: a process
// may start during a fault that ends its first connections (a promotion
// resets every connection of the proxies; under load a child can take
// longer to start than the nemesis waits).
func openRetrying(ctx context.Context, rawDSN string, timeout time.Duration) (*sql.DB, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		db, _, err := dsn.Open(ctx, rawDSN)
		if err == nil {
			return db, nil
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func jepsenName(i int) string { return "cell-" + strconv.Itoa(i) }

// The jepsen-client role is dispatched here, before TestMain (which this
// file cannot extend without touching the other roles' dispatch): the
// child runs its workload and exits.
func init() {
	if os.Getenv(childRoleEnv) == jepsenRole {
		os.Exit(jepsenChild())
	}
}

// jepsenChild runs 2 clients x 2 workers until the deadline in
// SQLDLM_JEPSEN_UNTIL, recording every operation.
func jepsenChild() int {
	proc, _ := strconv.Atoi(os.Getenv(jepsenProcEnv))
	seed, _ := strconv.ParseUint(os.Getenv(jepsenSeedEnv), 10, 64)
	until, _ := strconv.ParseInt(os.Getenv(jepsenUntilEnv), 10, 64)
	ttl := jepsenTTL
	if v := os.Getenv(jepsenTTLEnv); v != "" {
		var err error
		if ttl, err = time.ParseDuration(v); err != nil {
			fmt.Fprintln(os.Stderr, "jepsen child:", jepsenTTLEnv, err)
			return 1
		}
	}
	kind := os.Getenv(childKindEnv)
	campaignShare, permitShare, err := jepsenMix()
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen child:", err)
		return 1
	}
	f, err := os.OpenFile(os.Getenv(jepsenHistEnv), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "jepsen child:", err)
		return 1
	}
	defer f.Close()
	rec := jepsen.NewRecorder(f)
	leaseEnded := func(e testknobs.LeaseEnd) {
		now := jepsen.Mono()
		ev := jepsen.Event{P: proc, T: jepsen.LeaseEnd, Lease: e.LeaseID, Deadline: now + int64(time.Until(e.Deadline)), Mono: now}
		if e.Err != nil {
			ev.Err = e.Err.Error()
		}
		rec.Record(ev)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	var opID atomic.Int64
	var clients []*sqldlm.Client
	counts := &opCounts{n: map[string]int{}}
	for ci := range jepsenClients {
		db, err := openRetrying(ctx, os.Getenv(childDSNEnv), 30*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, "jepsen child:", err)
			return 1
		}
		defer db.Close()
		knobs := &testknobs.Knobs{LeaseEnded: leaseEnded}
		c, err := sqldlm.New(db, withKnobs(sqldlm.Config{TTL: ttl, ReapInterval: jepsenReap, Audit: true,
			Owner: fmt.Sprintf("p%d.c%d", proc, ci), ConnectTimeout: 30 * time.Second}, knobs))
		if err != nil {
			fmt.Fprintln(os.Stderr, "jepsen child:", err)
			return 1
		}
		clients = append(clients, c)
		for wi := range jepsenWorkers {
			w := &jepsenWorker{
				proc: proc, w: ci*jepsenWorkers + wi, kind: kind, ttl: ttl, c: c, knobs: knobs, db: db, rec: rec, ids: &opID, until: until,
				rng: rand.New(rand.NewPCG(seed, uint64(ci*jepsenWorkers+wi))), counts: counts,
				campaignShare: campaignShare, permitShare: permitShare,
			}
			w.zipf = rand.NewZipf(w.rng, 1.2, 1, jepsenNames-1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.run(ctx)
			}()
		}
	}
	wg.Wait()
	for _, c := range clients {
		_ = c.Close()
	}
	counts.mu.Lock()
	for k, n := range counts.n {
		rec.Record(jepsen.Event{P: proc, T: jepsen.Count, F: k, Op: int64(n)})
	}
	counts.mu.Unlock()
	if err := rec.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "jepsen child: history:", err)
		return 1
	}
	return 0
}

type jepsenWorker struct {
	proc, w int
	kind    string
	ttl     time.Duration
	c       *sqldlm.Client
	knobs   *testknobs.Knobs // c's
	db      *sql.DB
	rec     *jepsen.Recorder
	ids     *atomic.Int64
	until   int64
	rng     *rand.Rand
	zipf    *rand.Zipf
	counts  *opCounts
	// The shares of turns that campaign and that take a permit (jepsenMix).
	campaignShare, permitShare float64
}

// opCounts counts the operations a process ran, by kind (written to its
// log at exit, and read by the parent from the history's "counts" event).
type opCounts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *opCounts) Add(kind string) {
	c.mu.Lock()
	c.n[kind]++
	c.mu.Unlock()
}

// between returns a duration drawn from U(lo, hi) x TTL.
func (w *jepsenWorker) between(lo, hi float64) time.Duration {
	return time.Duration((lo + w.rng.Float64()*(hi-lo)) * float64(w.ttl))
}

func (w *jepsenWorker) event(t, f string, l *sqldlm.Lock, id int64) jepsen.Event {
	e := jepsen.Event{P: w.proc, W: w.w, Op: id, T: t, F: f}
	if l != nil {
		e.Name, e.Token, e.Mode = l.Name(), l.Token(), l.Mode().String()
	}
	return e
}

func (w *jepsenWorker) run(ctx context.Context) {
	for jepsen.Mono() < w.until {
		var h *coordHold
		switch x := w.rng.Float64(); {
		case x < w.campaignShare:
			h = w.campaign(ctx)
		case x < w.campaignShare+w.permitShare:
			h = w.takePermit(ctx)
		default:
			if w.lockTurn(ctx) {
				continue
			}
		}
		if h == nil {
			time.Sleep(w.between(0, 0.1)) // think time: the workload, not synchronisation
			continue
		}
		w.coordSection(ctx, h)
	}
}

// lockTurn takes a lock and runs a critical section under it. It returns
// false if it got no lock.
func (w *jepsenWorker) lockTurn(ctx context.Context) bool {
	name := jepsenName(int(w.zipf.Uint64()))
	mode := sqldlm.Exclusive
	if w.rng.Float64() < 0.3 {
		mode = sqldlm.Shared
	}
	l := w.acquire(ctx, name, mode)
	if l == nil {
		return false
	}
	w.criticalSection(ctx, l)
	return true
}

// acquire runs Lock (with a timeout of U(0.1, 2) x TTL) or, 20% of the
// time, TryLock.
func (w *jepsenWorker) acquire(ctx context.Context, name string, mode sqldlm.Mode) *sqldlm.Lock {
	id := w.ids.Add(1)
	f := jepsen.Acquire
	inTx := false
	switch x := w.rng.Float64(); {
	case x < 0.15:
		f = jepsen.TryAcquire
	case x < 0.3:
		f, inTx = jepsen.TryAcquire, true // TryLockTx, then COMMIT
	}
	w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Invoke, F: f, Name: name, Mode: mode.String()})
	var (
		l   *sqldlm.Lock
		err error
	)
	if inTx {
		var unknown bool
		l, unknown, err = w.tryLockTx(ctx, name, mode)
		if unknown {
			// TryLockTx granted in tx, and the COMMIT's outcome is unknown:
			// the lock may exist (the handle settles it). The history
			// cannot say which, so the handle is released unused.
			w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Info, F: f, Name: name, Err: err.Error()})
			w.counts.Add("trylocktx")
			rctx, cancel := context.WithTimeout(ctx, jepsenReleaseLimit)
			_ = l.Release(rctx)
			cancel()
			return nil
		}
		w.counts.Add("trylocktx")
	} else if f == jepsen.TryAcquire {
		tctx, cancel := context.WithTimeout(ctx, w.ttl)
		l, err = w.c.TryLock(tctx, name, mode)
		cancel()
		w.counts.Add("trylock")
	} else {
		w.counts.Add("lock")
		tctx, cancel := context.WithTimeout(ctx, w.between(0.1, 2))
		l, err = w.c.Lock(tctx, name, mode)
		cancel()
	}
	if err != nil {
		e := jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Fail, F: f, Name: name, Err: err.Error()}
		// A failed acquire is withdrawn by the library; either way it leaves
		// the model unchanged, so any error is a failure here.
		w.rec.Record(e)
		return nil
	}
	e := w.event(jepsen.OK, f, l, id)
	e.Lease = w.knobs.LeaseOf(l)
	if tk := l.Takeover(); tk != nil {
		e.TookLease, e.TookToken = tk.LeaseID, tk.Token
	}
	w.rec.Record(e)
	w.watchLost(l.Done(), l.Err, func() jepsen.Event {
		ev := w.event(jepsen.Lost, "", l, 0) // its token and mode as it was lost
		ev.Lease = e.Lease
		return ev
	})
	return l
}

// watchLost records the Lost event lost returns when done closes with
// ErrLost: a lock's, a leadership's or a permit's.
func (w *jepsenWorker) watchLost(done <-chan struct{}, errOf func() error, lost func() jepsen.Event) {
	go func() {
		<-done
		if errors.Is(errOf(), sqldlm.ErrLost) {
			w.rec.Record(lost())
		}
	}()
}

// tryLockTx runs TryLockTx in a READ COMMITTED transaction and commits it.
// It returns unknown when the grant was made and the COMMIT failed: the
// lock may exist.
func (w *jepsenWorker) tryLockTx(ctx context.Context, name string, mode sqldlm.Mode) (*sqldlm.Lock, bool, error) {
	tctx, cancel := context.WithTimeout(ctx, w.ttl)
	defer cancel()
	tx, err := w.db.BeginTx(tctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, false, err
	}
	l, err := w.c.TryLockTx(tctx, tx, name, mode)
	if err != nil {
		_ = tx.Rollback()
		return nil, false, err
	}
	if err := tx.Commit(); err != nil {
		return l, true, err
	}
	return l, false, nil
}

// criticalSection runs 1-3 fenced transactions under l, with sleeps
// between them (sometimes longer than the TTL), maybe an upgrade or a
// downgrade, then releases l with a 1s context.
func (w *jepsenWorker) criticalSection(ctx context.Context, l *sqldlm.Lock) {
	lease := w.knobs.LeaseOf(l)
	cs := int64(w.proc)<<32 | w.ids.Add(1)
	k := 1 + w.rng.IntN(3)
	for seq := 1; seq <= k; seq++ {
		if l.Mode() == sqldlm.Shared && w.rng.Float64() < 0.25 {
			w.counts.Add("upgrade")
			w.upgrade(ctx, l, lease)
		}
		w.fencedTx(ctx, l, lease, cs, seq)
		if seq < k {
			w.pause()
		}
	}
	if l.Mode() == sqldlm.Exclusive && w.rng.Float64() < 0.15 {
		w.counts.Add("downgrade")
		w.simple(ctx, w.lockInvoke(jepsen.Downgrade, l, lease), l.Downgrade)
	}
	if w.rng.Float64() < 0.2 {
		w.counts.Add("releasetx")
		w.simple(ctx, w.lockInvoke(jepsen.Release, l, lease), func(ctx context.Context) error { return w.releaseTx(ctx, l) })
		return
	}
	w.counts.Add("release")
	w.simple(ctx, w.lockInvoke(jepsen.Release, l, lease), l.Release)
}

// lockInvoke returns the invoke of operation f on l (its id not yet set).
func (w *jepsenWorker) lockInvoke(f string, l *sqldlm.Lock, lease int64) jepsen.Event {
	e := w.event(jepsen.Invoke, f, l, 0)
	e.Lease = lease
	return e
}

// pause sleeps between two fenced transactions of a critical section: up
// to 0.6 x TTL, sometimes longer than the TTL.
func (w *jepsenWorker) pause() {
	d := w.between(0, 0.6)
	if w.rng.Float64() < 0.05 {
		d = w.between(1, 2)
	}
	time.Sleep(d) // the workload's pause inside a critical section
}

// releaseTx releases l with ReleaseTx in a transaction that commits, then
// calls Release as documented. It returns nil when the lock was released
// (by the commit or by Release), Release's error otherwise.
func (w *jepsenWorker) releaseTx(ctx context.Context, l *sqldlm.Lock) error {
	tx, err := w.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err == nil {
		if err = l.ReleaseTx(ctx, tx); err == nil {
			err = tx.Commit()
		} else {
			_ = tx.Rollback()
		}
	}
	rerr := l.Release(ctx)
	if err != nil && rerr == nil {
		return nil // released by Release after the transaction failed
	}
	return rerr
}

func (w *jepsenWorker) upgrade(ctx context.Context, l *sqldlm.Lock, lease int64) {
	id := w.ids.Add(1)
	inv := w.event(jepsen.Invoke, jepsen.Upgrade, l, id)
	inv.Lease = lease
	w.rec.Record(inv)
	uctx, cancel := context.WithTimeout(ctx, w.between(0.1, 1))
	err := l.Upgrade(uctx)
	cancel()
	switch {
	case err == nil:
		e := w.event(jepsen.OK, jepsen.Upgrade, l, id)
		if tk := l.Takeover(); tk != nil {
			e.TookLease, e.TookToken = tk.LeaseID, tk.Token
		}
		w.rec.Record(e)
	case errors.Is(err, sqldlm.ErrLost), errors.Is(err, sqldlm.ErrUpgradeConflict), errors.Is(err, context.DeadlineExceeded):
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Fail, F: jepsen.Upgrade, Err: err.Error()})
	default:
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Info, F: jepsen.Upgrade, Err: err.Error()})
	}
}

// simple runs and records a Downgrade or Release (of a lock, or of a
// leadership or permit), whose invoke is inv.
func (w *jepsenWorker) simple(ctx context.Context, inv jepsen.Event, call func(context.Context) error) {
	id := w.ids.Add(1)
	inv.Op = id
	f := inv.F
	w.rec.Record(inv)
	cctx, cancel := context.WithTimeout(ctx, jepsenReleaseLimit)
	err := call(cctx)
	cancel()
	switch {
	case err == nil:
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.OK, F: f})
	case errors.Is(err, sqldlm.ErrLost), errors.Is(err, sqldlm.ErrReleased):
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Fail, F: f, Err: err.Error()})
	default:
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Info, F: f, Err: err.Error()})
	}
}

// fencedTx is one fenced transaction under l: an exclusive holder reads
// the name's cell and writes counter+1 and its token; every holder appends
// a journal row.
func (w *jepsenWorker) fencedTx(ctx context.Context, l *sqldlm.Lock, lease int64, cs int64, seq int) {
	inv := w.lockInvoke(jepsen.Fence, l, lease)
	inv.CS, inv.Seq = cs, seq
	w.fenced(ctx, inv, l.Fence, func(ctx context.Context, tx *sql.Tx) error {
		token, mode := l.Token(), l.Mode()
		var counter int64
		if err := tx.QueryRowContext(ctx, q(w.kind, `SELECT counter FROM cells WHERE name = ?`), l.Name()).Scan(&counter); err != nil {
			return err
		}
		if mode == sqldlm.Exclusive {
			counter++
			if _, err := tx.ExecContext(ctx, q(w.kind, `UPDATE cells SET counter = ?, last_token = ? WHERE name = ?`), counter, token, l.Name()); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, q(w.kind, `INSERT INTO journal (op_id, seq, name, token, lease_id, client, counter, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
			cs, seq, l.Name(), token, lease, fmt.Sprintf("p%d.w%d", w.proc, w.w), counter, mode.String())
		return err
	})
}

// fenced runs one fenced transaction, whose invoke is inv: fence, then
// write. It is recorded as one Fence operation, from Fence to COMMIT: an
// error before COMMIT rolled it back (Fail), an error from COMMIT leaves it
// unknown (Info).
func (w *jepsenWorker) fenced(ctx context.Context, inv jepsen.Event, fence, write func(context.Context, *sql.Tx) error) {
	id := w.ids.Add(1)
	inv.Op = id
	w.rec.Record(inv)
	fail := func(err error) {
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Fail, F: jepsen.Fence, Err: err.Error()})
	}
	tctx, cancel := context.WithTimeout(ctx, 2*w.ttl)
	defer cancel()
	// Fence at READ COMMITTED, REPEATABLE READ or SERIALIZABLE; at the
	// latter two, sometimes with the snapshot taken before Fence (a first
	// read), and sometimes older than the lease's last renewal.
	levels := []sql.IsolationLevel{sql.LevelDefault, sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable}
	level := levels[w.rng.IntN(len(levels))]
	w.counts.Add("fence " + level.String())
	tx, err := w.db.BeginTx(tctx, &sql.TxOptions{Isolation: level})
	if err != nil {
		fail(err)
		return
	}
	defer tx.Rollback()
	if level >= sql.LevelRepeatableRead && w.rng.Float64() < 0.5 {
		var n int
		if err := tx.QueryRowContext(tctx, `SELECT COUNT(*) FROM cells`).Scan(&n); err != nil {
			fail(err)
			return
		}
		if w.rng.Float64() < 0.3 {
			time.Sleep(w.between(0.3, 0.8)) // the snapshot ages past a renewal: the workload, not synchronisation
		}
	}
	if err := fence(tctx, tx); err != nil {
		fail(err)
		return
	}
	if err := write(tctx, tx); err != nil {
		fail(err)
		return
	}
	if err := tx.Commit(); err != nil {
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Info, F: jepsen.Fence, Err: err.Error()})
		return
	}
	w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.OK, F: jepsen.Fence})
}
