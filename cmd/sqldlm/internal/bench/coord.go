package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect"
)

// Defaults of the coordination runs' fields of [Config].
const (
	CoordTTLDefault         = 2 * time.Second
	CoordDurationDefault    = 10 * time.Second
	FailoversDefault        = 5
	MembersDefault          = 1000
	MemberClientsDefault    = 10
	SemaphoreLimitDefault   = 8
	SemaphoreWorkersDefault = 32
)

const (
	// coordSteps is the number of progress steps of the coordination runs.
	coordSteps = 6
	// The watch run: watchIssuers member Clients, each joining and leaving
	// watchSlots ids of its own, at watchOpsPerSecond changes in all.
	watchIssuers      = 4
	watchSlots        = 8
	watchOpsPerSecond = 20
	// loadJoiners join the write-load run's members.
	loadJoiners = 16
)

// coordination runs the coordination runs; step is the last step done so
// far.
func (e *env) coordination(ctx context.Context, step, steps int) (*Coordination, error) {
	out := &Coordination{TTLSeconds: e.cfg.CoordTTL.Seconds()}
	var err error
	if out.Watch, err = e.coordWatch(ctx, step+1, steps); err != nil {
		return nil, fmt.Errorf("coordination, watch: %w", err)
	}
	if out.Failover, err = e.coordFailover(ctx, step+2, steps); err != nil {
		return nil, fmt.Errorf("coordination, leader failover: %w", err)
	}
	if out.Semaphore, err = e.coordSemaphore(ctx, step+3, steps); err != nil {
		return nil, fmt.Errorf("coordination, semaphore: %w", err)
	}
	if out.WriteLoad, err = e.coordWriteLoad(ctx, step+4, steps); err != nil {
		return nil, fmt.Errorf("coordination, %d members: %w", e.cfg.Members, err)
	}
	return out, nil
}

// wakeup says how a change reaches a watcher on this database.
func wakeup(d dialect.Dialect) string {
	if _, ok := d.(dialect.Notifier); ok {
		return "LISTEN/NOTIFY"
	}
	return "polling"
}

// watchKey names one change a watcher reports: a join or a leave of one
// incarnation of a member.
type watchKey struct {
	kind sqldlm.EventKind
	id   string
	inc  int64
}

// watchOp is one Join or Leave call of the watch run.
type watchOp struct {
	key      watchKey
	returned time.Time
}

// coordWatch measures how long a join or a leave takes to reach a watcher
// on another Client: watchIssuers member Clients join and leave ids of
// their own at random times (watchOpsPerSecond in all, so that the changes
// fall at every point of the watcher's polling interval), and each change's
// latency runs from its Join or Leave call returning to the watcher's
// event. Step step.
func (e *env) coordWatch(ctx context.Context, step, steps int) (*WatchRun, error) {
	interval := e.cfg.WatchInterval
	out := &WatchRun{WatchIntervalSeconds: interval.Seconds(), DurationSeconds: e.cfg.CoordDuration.Seconds(),
		MemberClients: watchIssuers, OpsPerSecond: watchOpsPerSecond}
	// Two connections a Client: a statement and, on PostgreSQL, its
	// listener.
	db, _, err := openPool(e.d, 2*(watchIssuers+1)+2)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	d, err := sqldlm.DetectDialect(db)
	if err != nil {
		return nil, err
	}
	out.Wakeup = wakeup(d)
	newClient := func(who string) (*sqldlm.Client, error) {
		return sqldlm.New(db, sqldlm.Config{TTL: e.cfg.TTL, WatchInterval: interval,
			Owner: fmt.Sprintf("sqldlm-bench/%s/watch/%s", e.runID, who)})
	}
	watcher, err := newClient("watcher")
	if err != nil {
		return nil, err
	}
	defer watcher.Close()
	issuers := make([]*sqldlm.Client, watchIssuers)
	for i := range issuers {
		c, err := newClient(fmt.Sprintf("member-%d", i))
		if err != nil {
			return nil, err
		}
		defer c.Close()
		issuers[i] = c
	}
	group := fmt.Sprintf("sqldlm-bench/%s/watch", e.runID)
	prog := e.begin(step, steps, fmt.Sprintf("coordination: join/leave to a watcher (%s, interval %s)", out.Wakeup, interval))

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := watcher.Watch(wctx, group)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	var (
		mu      sync.Mutex
		seen    = map[watchKey]time.Time{} // when the watcher got each change's event
		resyncs int
	)
	synced := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for ev := range w.Events() {
			now := time.Now()
			mu.Lock()
			if ev.Kind == sqldlm.Resync {
				if resyncs == 0 {
					close(synced)
				}
				resyncs++
			} else if k := (watchKey{ev.Kind, ev.Member.ID, ev.Member.Incarnation}); seen[k].IsZero() {
				seen[k] = now
			}
			mu.Unlock()
		}
	}()
	select {
	case <-synced:
	case <-readerDone:
		return nil, errors.New("the watch ended before its first event")
	case <-time.After(30 * time.Second):
		return nil, errors.New("no first event from the watch within 30s")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	seenAt := func(k watchKey) bool {
		mu.Lock()
		defer mu.Unlock()
		return !seen[k].IsZero()
	}

	// Each issuer switches one of its ids, picked at random (a join, or a
	// leave), at exponentially distributed intervals. An id whose last
	// change the watcher has not reported yet is passed over: a join and a
	// leave within one read of the group would show as nothing at all.
	start := time.Now()
	end := start.Add(e.cfg.CoordDuration)
	var (
		opsMu   sync.Mutex
		ops     []watchOp
		nOps    atomic.Int64
		errs    atomic.Int64
		lastErr atomic.Value
		issuer  atomic.Int64
	)
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-tick.C:
			}
			prog.report(time.Since(start), nOps.Load(), false)
		}
	}()
	err = parallel(ctx, watchIssuers, func(ctx context.Context) error {
		i := int(issuer.Add(1)) - 1
		c := issuers[i]
		type slot struct {
			id   string
			m    *sqldlm.Membership
			last watchKey
		}
		slots := make([]slot, watchSlots)
		for k := range slots {
			slots[k].id = fmt.Sprintf("c%d-%d", i, k)
		}
		mean := time.Duration(float64(time.Second) * watchIssuers / watchOpsPerSecond)
		for {
			gap := time.Duration(rand.ExpFloat64() * float64(mean))
			if time.Now().Add(gap).After(end) {
				return nil
			}
			t := time.NewTimer(gap)
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
			s, first := -1, rand.N(len(slots))
			for k := range slots {
				j := (first + k) % len(slots)
				if slots[j].last.id == "" || seenAt(slots[j].last) {
					s = j
					break
				}
			}
			if s < 0 {
				continue
			}
			sl := &slots[s]
			var key watchKey
			if sl.m == nil {
				m, err := c.Join(ctx, group, sl.id)
				if err != nil {
					errs.Add(1)
					lastErr.Store(err)
					if errs.Load() >= 100 {
						return fmt.Errorf("%d failed joins and leaves, the last: %w", errs.Load(), err)
					}
					continue
				}
				sl.m = m
				key = watchKey{sqldlm.MemberJoined, sl.id, m.Incarnation()}
			} else {
				key = watchKey{sqldlm.MemberLeft, sl.id, sl.m.Incarnation()}
				if err := sl.m.Leave(ctx); err != nil {
					return fmt.Errorf("leave %s: %w", sl.id, err) // a lost membership: the run is not valid
				}
				sl.m = nil
			}
			returned := time.Now()
			sl.last = key
			opsMu.Lock()
			ops = append(ops, watchOp{key: key, returned: returned})
			opsMu.Unlock()
			nOps.Add(1)
		}
	})
	close(stopProgress)
	<-progressDone
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(start)
	// The last changes' events: within an interval and a read, or never.
	deadline := time.Now().Add(2*interval + 5*time.Second)
	for _, op := range ops {
		for !seenAt(op.key) && time.Now().Before(deadline) {
			t := time.NewTimer(10 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
		}
	}
	cancel()
	<-readerDone

	var joins, leaves []time.Duration
	for _, op := range ops {
		at := seen[op.key]
		if at.IsZero() {
			out.Missed++
			continue
		}
		// An event read before the call returned (the watcher's read came
		// between the commit and the answer) counts as 0.
		lat := max(at.Sub(op.returned), 0)
		if op.key.kind == sqldlm.MemberJoined {
			joins = append(joins, lat)
		} else {
			leaves = append(leaves, lat)
		}
	}
	slices.Sort(joins)
	slices.Sort(leaves)
	out.Joins, out.Leaves = len(joins), len(leaves)
	out.JoinP50Ms, out.JoinP99Ms = ms(percentile(joins, 0.5)), ms(percentile(joins, 0.99))
	out.LeaveP50Ms, out.LeaveP99Ms = ms(percentile(leaves, 0.5)), ms(percentile(leaves, 0.99))
	if len(joins) > 0 {
		out.JoinMaxMs = ms(joins[len(joins)-1])
	}
	if len(leaves) > 0 {
		out.LeaveMaxMs = ms(leaves[len(leaves)-1])
	}
	out.Resyncs = max(resyncs-1, 0)
	out.Errors = errs.Load()
	if err, ok := lastErr.Load().(error); ok {
		out.LastError = err.Error()
	}
	prog.report(elapsed, int64(len(ops)), true)
	return out, nil
}

// coordFailover measures leader failover: a leader in a child process
// (TTL CoordTTL) is killed with SIGKILL while a standby Client waits in
// Campaign, and the time from the kill to the standby's Campaign
// returning elected is one round. Step step.
func (e *env) coordFailover(ctx context.Context, step, steps int) (*FailoverRun, error) {
	ttl := e.cfg.CoordTTL
	out := &FailoverRun{TTLSeconds: ttl.Seconds(), Rounds: e.cfg.Failovers}
	db, _, err := openPool(e.d, 4)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	owner := fmt.Sprintf("sqldlm-bench/%s/failover/standby", e.runID)
	standby, err := sqldlm.New(db, sqldlm.Config{TTL: ttl, Owner: owner})
	if err != nil {
		return nil, err
	}
	defer standby.Close()
	election := fmt.Sprintf("sqldlm-bench/%s/failover", e.runID)
	prog := e.begin(step, steps, fmt.Sprintf("coordination: leader failover after SIGKILL, TTL %s", ttl))
	var secs []float64
	for round := range e.cfg.Failovers {
		d, err := e.failoverRound(ctx, standby, owner, election, round)
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", round+1, err)
		}
		secs = append(secs, d.Seconds())
		prog.at(int64(round+1), false)
	}
	out.Seconds = secs
	if len(secs) > 0 {
		out.MinSeconds, out.MaxSeconds = slices.Min(secs), slices.Max(secs)
		out.MedianSeconds = median(secs)
	}
	prog.at(int64(len(secs)), true)
	return out, nil
}

// failoverRound starts a leader child, makes standby campaign, waits until
// its request waits in the database, kills the child at a random point of
// its lease's renewal period, and returns the time from the kill to the
// standby's election.
func (e *env) failoverRound(ctx context.Context, standby *sqldlm.Client, owner, election string, round int) (time.Duration, error) {
	ttl := e.cfg.CoordTTL
	ch, err := e.startChild("--role", "leader", "--election", election, "--ttl", ttl.String(),
		"--owner", fmt.Sprintf("sqldlm-bench/%s/failover/leader-%d", e.runID, round))
	if err != nil {
		return 0, err
	}
	defer ch.stop()
	if _, err := ch.expect(ctx, "elected", 30*time.Second); err != nil {
		return 0, err
	}
	type result struct {
		ld  *sqldlm.Leadership
		at  time.Time
		err error
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan result, 1)
	go func() {
		ld, err := standby.Campaign(cctx, election, "standby")
		done <- result{ld, time.Now(), err}
	}()
	// The standby is waiting once its request shows among the election's
	// waiters.
	deadline := time.Now().Add(30 * time.Second)
	for {
		infos, err := standby.Locks(ctx, sqldlm.Filter{Prefix: sqldlm.ElectionPrefix + election})
		if err != nil {
			return 0, err
		}
		waiting := false
		for _, li := range infos {
			for _, w := range li.Waiters {
				waiting = waiting || w.Owner == owner
			}
		}
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			return 0, errors.New("the standby's campaign did not show as waiting within 30s")
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case r := <-done:
			t.Stop()
			if r.err == nil {
				_ = r.ld.Resign(ctx)
				return 0, errors.New("the standby was elected while the leader lived")
			}
			return 0, r.err
		case <-t.C:
		}
	}
	// The kill falls anywhere in the leader's renewal period (TTL/3), as a
	// crash would, not just after its lease was created or renewed.
	t := time.NewTimer(rand.N(ttl / 3))
	select {
	case <-ctx.Done():
		t.Stop()
		return 0, ctx.Err()
	case <-t.C:
	}
	if err := ch.cmd.Process.Kill(); err != nil {
		return 0, fmt.Errorf("kill the leader: %w", err)
	}
	killed := time.Now()
	limit := time.NewTimer(3*ttl + 30*time.Second)
	defer limit.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			return 0, r.err
		}
		if err := r.ld.Resign(ctx); err != nil {
			return 0, fmt.Errorf("resign: %w", err)
		}
		return r.at.Sub(killed), nil
	case <-limit.C:
		return 0, fmt.Errorf("the standby was not elected within %s of the kill", 3*ttl+30*time.Second)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// permitWorker acquires a permit of a semaphore and releases it.
type permitWorker struct {
	s *sqldlm.Semaphore
	p *sqldlm.Permit
}

func (w *permitWorker) lock(ctx context.Context) error {
	p, err := w.s.Acquire(ctx)
	w.p = p
	return err
}

func (w *permitWorker) unlock(ctx context.Context) error { return w.p.Release(ctx) }

// coordSemaphore measures permit acquire+release pairs of one semaphore
// of SemaphoreLimit permits with SemaphoreWorkers workers spread over
// min(workers, Procs) Clients, as a cell does. Step step.
func (e *env) coordSemaphore(ctx context.Context, step, steps int) (*SemaphoreRun, error) {
	workers, limit := e.cfg.SemaphoreWorkers, e.cfg.SemaphoreLimit
	nClients := max(min(workers, e.cfg.Procs), 1)
	out := &SemaphoreRun{Limit: limit, Workers: workers, Clients: nClients, DurationSeconds: e.cfg.Duration.Seconds()}
	counter := &stmtCounter{}
	db, err := openPoolCounted(e.d, workers+nClients+2, counter)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	name := fmt.Sprintf("sqldlm-bench/%s/semaphore", e.runID)
	sems := make([]*sqldlm.Semaphore, nClients)
	for i := range sems {
		c, err := sqldlm.New(db, sqldlm.Config{TTL: e.cfg.TTL, Owner: fmt.Sprintf("sqldlm-bench/%s/semaphore/%d", e.runID, i)})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		sems[i] = c.Semaphore(name, limit)
	}
	ws := make([]worker, workers)
	for i := range ws {
		ws[i] = &permitWorker{s: sems[i%nClients]}
	}
	prog := e.begin(step, steps, fmt.Sprintf("coordination: semaphore limit %d, %d workers on %d Clients", limit, workers, nClients))
	res, err := runCell(ctx, ws, counter, nil, false, e.cfg.Warmup, e.cfg.Duration, func(el time.Duration, p int64) {
		prog.report(el, p, false)
	})
	if err != nil {
		return nil, err
	}
	out.PairsPerSecond = res.rate()
	out.Pairs = res.pairs
	out.P50Ms, out.P99Ms = ms(percentile(res.latency, 0.5)), ms(percentile(res.latency, 0.99))
	out.WaitP99Ms = ms(percentile(res.wait, 0.99))
	if res.pairs > 0 {
		out.StatementsPerPair = float64(res.statements) / float64(res.pairs)
	}
	out.Errors = res.errors
	if res.lastErr != nil {
		out.LastError = res.lastErr.Error()
	}
	prog.report(e.cfg.Duration, res.pairs, true)
	return out, nil
}

// coordWriteLoad counts the statements MemberClients Clients send while
// quiet, first with their leases and nothing else, then with Members
// members of one group spread over them: members ride on their Client's
// lease, so the count should stay one renewal per Client per TTL/3.
// The Clients' reapers are off, so that only their heartbeats run. Steps
// step to step+2.
func (e *env) coordWriteLoad(ctx context.Context, step, steps int) (*WriteLoadRun, error) {
	n, members, ttl, window := e.cfg.MemberClients, e.cfg.Members, e.cfg.CoordTTL, e.cfg.CoordDuration
	out := &WriteLoadRun{Members: members, Clients: n, TTLSeconds: ttl.Seconds(), RenewIntervalSeconds: (ttl / 3).Seconds(),
		WindowSeconds: window.Seconds(), ExpectedStatementsPerSecond: float64(n) / (ttl / 3).Seconds()}
	counter := &stmtCounter{}
	db, err := openPoolCounted(e.d, 2*n+loadJoiners, counter)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	hooks := newScaleHooks()
	group := fmt.Sprintf("sqldlm-bench/%s/load", e.runID)
	clients := make([]*sqldlm.Client, n)
	for i := range clients {
		c, err := sqldlm.New(db, sqldlm.Config{TTL: ttl, ReapInterval: sqldlm.ReapDisabled, Hooks: hooks,
			Owner: fmt.Sprintf("sqldlm-bench/%s/load/%d", e.runID, i)})
		if err != nil {
			return nil, err
		}
		defer c.Close()
		clients[i] = c
		// A join and a leave give the Client its lease, which it keeps
		// with nothing held.
		m, err := c.Join(ctx, group, fmt.Sprintf("warmup-%d", i))
		if err != nil {
			return nil, err
		}
		if err := m.Leave(ctx); err != nil {
			return nil, err
		}
	}
	// quiet counts statements and renewals over one window.
	quiet := func(step int, what string) (stmtsPerSec, renewalsPerClientPeriod, stmtsPerRenewal float64, err error) {
		prog := e.begin(step, steps, what)
		s0, _ := counter.load()
		r0 := hooks.renewals.Load()
		start := time.Now()
		end := start.Add(window)
		for {
			d := time.Until(end)
			if d <= 0 {
				break
			}
			t := time.NewTimer(min(d, 250*time.Millisecond))
			select {
			case <-ctx.Done():
				t.Stop()
				return 0, 0, 0, ctx.Err()
			case <-t.C:
			}
			s, _ := counter.load()
			prog.at(s-s0, false)
		}
		el := time.Since(start)
		s1, _ := counter.load()
		renewals := hooks.renewals.Load() - r0
		stmts := s1 - s0
		stmtsPerSec = float64(stmts) / el.Seconds()
		renewalsPerClientPeriod = float64(renewals) / float64(n) / (el.Seconds() / (ttl / 3).Seconds())
		if renewals > 0 {
			stmtsPerRenewal = float64(stmts) / float64(renewals)
		}
		prog.report(el, stmts, true)
		return stmtsPerSec, renewalsPerClientPeriod, stmtsPerRenewal, nil
	}
	if out.StatementsPerSecondNone, out.RenewalsPerClientPeriodNone, out.StatementsPerRenewalNone, err =
		quiet(step, fmt.Sprintf("coordination: statements of %d Clients holding nothing", n)); err != nil {
		return nil, err
	}

	prog := e.begin(step+1, steps, fmt.Sprintf("coordination: join %d members on %d Clients", members, n))
	mships := make([]*sqldlm.Membership, members)
	err = forEach(ctx, loadJoiners, members, func(ctx context.Context, i int) error {
		m, err := clients[i%n].Join(ctx, group, fmt.Sprintf("member-%d", i))
		mships[i] = m
		return err
	}, prog.every(100))
	if err != nil {
		return nil, err
	}
	out.JoinSeconds = time.Since(prog.start).Seconds()
	prog.at(int64(members), true)

	what := fmt.Sprintf("coordination: statements of %d Clients holding %d members", n, members)
	if out.StatementsPerSecondMembers, out.RenewalsPerClientPeriodMembers, out.StatementsPerRenewalMembers, err = quiet(step+2, what); err != nil {
		return nil, err
	}
	out.LeasesLost = hooks.leasesLost.Load()
	for _, m := range mships {
		if m.Err() != nil {
			out.MembersLost++
		}
	}
	return out, nil
}
