package bench

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect"
)

// scaleSteps is the number of progress steps of the scale runs.
const scaleSteps = 6

// scaleHooks counts a Client's renewals and losses.
type scaleHooks struct {
	sqldlm.NopHooks
	renewals   atomic.Int64
	leasesLost atomic.Int64
	renewed    chan time.Duration // each renewal's latency, if there is room

	mu        sync.Mutex
	latencies []time.Duration
	keep      bool
}

func newScaleHooks() *scaleHooks { return &scaleHooks{renewed: make(chan time.Duration, 64)} }

func (h *scaleHooks) LeaseRenewed(latency time.Duration) {
	h.renewals.Add(1)
	select {
	case h.renewed <- latency:
	default:
	}
	h.mu.Lock()
	if h.keep {
		h.latencies = append(h.latencies, latency)
	}
	h.mu.Unlock()
}

func (h *scaleHooks) LeaseLost(int) { h.leasesLost.Add(1) }

// noNotify hides a dialect's Notifier, so Clients wait by polling and keep
// no LISTEN connection.
type noNotify struct{ dialect.Dialect }

// scale runs the scale runs; step is the last step done so far.
func (e *env) scale(ctx context.Context, step, steps int) (*Scale, error) {
	held, err := e.scaleHeld(ctx, step, steps)
	if err != nil {
		return nil, fmt.Errorf("scale, held locks: %w", err)
	}
	clients, err := e.scaleClients(ctx, step+4, steps)
	if err != nil {
		return nil, fmt.Errorf("scale, %d clients: %w", e.cfg.Clients, err)
	}
	return &Scale{Held: held, Clients: clients}, nil
}

// scaleHeld measures one Client holding cfg.HeldLocks locks: the pair rate
// with none and with all held, the statements per renewal, and the Go heap
// each held lock costs. Steps step+1 to step+4.
func (e *env) scaleHeld(ctx context.Context, step, steps int) (*HeldScale, error) {
	n := e.cfg.HeldLocks
	out := &HeldScale{Locks: n, Workers: scaleWorkers}
	db, counter, err := openPool(e.d, scaleWorkers+3)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	hooks := newScaleHooks()
	// The reaper is off so that only the heartbeat runs while idle.
	c, err := sqldlm.New(db, sqldlm.Config{TTL: e.cfg.ScaleTTL, ReapInterval: sqldlm.ReapDisabled, Hooks: hooks,
		Owner: "sqldlm-bench/" + e.runID + "/held"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	prefix := fmt.Sprintf("sqldlm-bench/%s/held", e.runID)

	pairs := func(tag string, step int, what string) (float64, error) {
		ws := make([]worker, scaleWorkers)
		for i := range ws {
			ws[i] = &sqldlmWorker{c: c, name: fmt.Sprintf("%s/%s/%d", prefix, tag, i), mode: sqldlm.Exclusive}
		}
		e.report(Progress{Step: step, Steps: steps, What: what})
		res, err := runCell(ctx, ws, nil, nil, false, e.cfg.Warmup, e.cfg.Duration, func(el time.Duration, p int64) {
			e.report(Progress{Step: step, Steps: steps, What: what, Elapsed: el, Count: p, Rate: float64(p) / max(el.Seconds(), 1e-9)})
		})
		if err != nil {
			return 0, err
		}
		e.report(Progress{Step: step, Steps: steps, What: what, Elapsed: e.cfg.Duration, Count: res.pairs, Rate: res.rate(), Done: true})
		return res.rate(), nil
	}
	// renewal waits for the next renewal, then counts the statements and
	// times the round trips of the two after it, while nothing else runs.
	renewal := func(step int, what string) (stmts, latencyMs float64, err error) {
		e.report(Progress{Step: step, Steps: steps, What: what})
		wait := func() (time.Duration, error) {
			t := time.NewTimer(2 * e.cfg.ScaleTTL)
			defer t.Stop()
			select {
			case d := <-hooks.renewed:
				return d, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-t.C:
				return 0, fmt.Errorf("no lease renewal within %s", 2*e.cfg.ScaleTTL)
			}
		}
		for len(hooks.renewed) > 0 {
			<-hooks.renewed
		}
		if _, err := wait(); err != nil {
			return 0, 0, err
		}
		s0, _ := counter.load()
		var total time.Duration
		for range 2 {
			d, err := wait()
			if err != nil {
				return 0, 0, err
			}
			total += d
		}
		s1, _ := counter.load()
		e.report(Progress{Step: step, Steps: steps, What: what, Count: 2, Done: true})
		return float64(s1-s0) / 2, ms(total / 2), nil
	}

	if out.PairsPerSecondNoneHeld, err = pairs("none", step+1, "scale: pairs/s with no lock held"); err != nil {
		return nil, err
	}
	if out.StatementsPerRenewalNoneHeld, out.RenewalMsNoneHeld, err = renewal(step+1, "scale: renewals with no lock held"); err != nil {
		return nil, err
	}

	// Fill: everything the benchmark itself keeps is allocated before the
	// heap is read, so that the growth is the library's.
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s/lock/%d", prefix, i)
	}
	locks := make([]*sqldlm.Lock, n)
	runtime.GC()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	what := fmt.Sprintf("scale: acquire %d locks", n)
	e.report(Progress{Step: step + 2, Steps: steps, What: what})
	tenth := max(n/10, 1)
	marks := make([]atomic.Int64, 4) // nanoseconds since start when done reached 0, tenth, n-tenth, n
	var next, done atomic.Int64
	start := time.Now()
	err = parallel(ctx, scaleWorkers, func(ctx context.Context) error {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return nil
			}
			l, err := c.Lock(ctx, names[i], sqldlm.Exclusive)
			if err != nil {
				return err
			}
			locks[i] = l
			d := done.Add(1)
			now := int64(time.Since(start))
			switch d {
			case int64(tenth):
				marks[1].Store(now)
			case int64(n - tenth):
				marks[2].Store(now)
			case int64(n):
				marks[3].Store(now)
			}
			if d%1000 == 0 {
				el := time.Since(start)
				e.report(Progress{Step: step + 2, Steps: steps, What: what, Elapsed: el, Count: d, Rate: float64(d) / el.Seconds()})
			}
		}
	})
	if err != nil {
		return nil, err
	}
	out.FillSeconds = time.Since(start).Seconds()
	if n >= 10 {
		out.FillRateFirstTenth = float64(tenth) / time.Duration(marks[1].Load()).Seconds()
		out.FillRateLastTenth = float64(tenth) / time.Duration(marks[3].Load()-marks[2].Load()).Seconds()
	}
	e.report(Progress{Step: step + 2, Steps: steps, What: what, Elapsed: time.Since(start), Count: int64(n),
		Rate: float64(n) / out.FillSeconds, Done: true})
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&after)
	if e.cfg.Vacuum && e.fam.vacuum != "" {
		// As autovacuum would (autoanalyze), so that the plans fit tables
		// that grew by HeldLocks rows.
		if err := e.vacuum(ctx); err != nil {
			return nil, err
		}
	}
	if n > 0 {
		out.HeapBytesPerLock = (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / float64(n)
	}

	if out.StatementsPerRenewalHeld, out.RenewalMsHeld, err = renewal(step+3, fmt.Sprintf("scale: renewals with %d locks held", n)); err != nil {
		return nil, err
	}
	if out.PairsPerSecondHeld, err = pairs("held", step+3, fmt.Sprintf("scale: pairs/s with %d locks held", n)); err != nil {
		return nil, err
	}
	if out.PairsPerSecondNoneHeld > 0 {
		out.Ratio = out.PairsPerSecondHeld / out.PairsPerSecondNoneHeld
	}
	for _, l := range locks {
		if l.Err() != nil {
			return nil, fmt.Errorf("held lock %s: %w", l.Name(), l.Err())
		}
	}

	what = fmt.Sprintf("scale: release %d locks", n)
	e.report(Progress{Step: step + 4, Steps: steps, What: what})
	next.Store(0)
	start = time.Now()
	err = parallel(ctx, scaleWorkers, func(ctx context.Context) error {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return nil
			}
			if err := locks[i].Release(ctx); err != nil {
				return err
			}
		}
	})
	if err != nil {
		return nil, err
	}
	out.ReleaseSeconds = time.Since(start).Seconds()
	out.LeasesLost = hooks.leasesLost.Load()
	e.report(Progress{Step: step + 4, Steps: steps, What: what, Elapsed: time.Since(start), Count: int64(n),
		Rate: float64(n) / out.ReleaseSeconds, Done: true})
	runtime.KeepAlive(names)
	return out, nil
}

// scaleClients runs cfg.Clients Clients on one shared pool, each holding one
// lock, for cfg.ClientsDuration, and counts renewals and losses. Steps
// step+1 and step+2.
func (e *env) scaleClients(ctx context.Context, step, steps int) (*ClientsScale, error) {
	n := e.cfg.Clients
	out := &ClientsScale{Clients: n, TTLSeconds: e.cfg.ScaleTTL.Seconds(), DurationSeconds: e.cfg.ClientsDuration.Seconds(),
		Pool: e.cfg.ScalePool, Listeners: e.cfg.ScaleListen}
	pool := e.cfg.ScalePool
	db, _, err := openPool(e.d, pool)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	d, err := sqldlm.DetectDialect(db)
	if err != nil {
		return nil, err
	}
	if _, ok := d.(dialect.Notifier); !ok {
		out.Listeners = false
	} else if e.cfg.ScaleListen {
		db.SetMaxOpenConns(n + pool) // each listener keeps a connection
		db.SetMaxIdleConns(n + pool)
		out.Pool = n + pool
	} else {
		d = noNotify{d}
	}
	hooks := newScaleHooks()
	prog := e.begin(step+1, steps, fmt.Sprintf("scale: start %d clients, one lock each", n))
	clients := make([]*sqldlm.Client, n)
	locks := make([]*sqldlm.Lock, n)
	defer func() {
		var next atomic.Int64
		_ = parallel(context.Background(), 16, func(context.Context) error {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return nil
				}
				if clients[i] != nil {
					_ = clients[i].Close()
				}
			}
		})
	}()
	err = forEach(ctx, 16, n, func(ctx context.Context, i int) error {
		c, err := sqldlm.New(db, sqldlm.Config{Dialect: d, TTL: e.cfg.ScaleTTL, Hooks: hooks,
			Owner: fmt.Sprintf("sqldlm-bench/%s/client-%d", e.runID, i)})
		if err != nil {
			return err
		}
		clients[i] = c
		l, err := c.Lock(ctx, fmt.Sprintf("sqldlm-bench/%s/clients/%d", e.runID, i), sqldlm.Exclusive)
		locks[i] = l
		return err
	}, prog.every(50))
	if err != nil {
		return nil, err
	}
	out.SetupSeconds = time.Since(prog.start).Seconds()
	prog.at(int64(n), true)

	what := fmt.Sprintf("scale: %d clients renewing for %s", n, e.cfg.ClientsDuration)
	hooks.mu.Lock()
	hooks.keep = true
	hooks.mu.Unlock()
	r0, lost0 := hooks.renewals.Load(), hooks.leasesLost.Load()
	var cpu0 time.Duration
	cpuOK := false
	if e.cpu != nil {
		cpu0, err = e.cpu.sample()
		cpuOK = err == nil
	}
	start := time.Now()
	end := start.Add(e.cfg.ClientsDuration)
	tick := time.NewTicker(time.Second)
	for time.Now().Before(end) {
		select {
		case <-ctx.Done():
			tick.Stop()
			return nil, ctx.Err()
		case <-tick.C:
		case <-time.After(time.Until(end)):
		}
		el := time.Since(start)
		r := hooks.renewals.Load() - r0
		e.report(Progress{Step: step + 2, Steps: steps, What: what, Elapsed: el, Count: r, Rate: float64(r) / el.Seconds()})
	}
	tick.Stop()
	elapsed := time.Since(start)
	out.Renewals = hooks.renewals.Load() - r0
	out.LeasesLost = hooks.leasesLost.Load() - lost0
	if e.cpu != nil && cpuOK {
		if cpu1, err := e.cpu.sample(); err == nil {
			out.DBCPUSeconds = ptr((cpu1 - cpu0).Seconds())
		}
	}
	hooks.mu.Lock()
	hooks.keep = false
	lat := slices.Clone(hooks.latencies)
	hooks.mu.Unlock()
	slices.Sort(lat)
	out.RenewalsPerSecond = float64(out.Renewals) / elapsed.Seconds()
	out.ExpectedRenewalsPerSecond = float64(n) / (e.cfg.ScaleTTL / 3).Seconds()
	out.RenewalP50Ms = ms(percentile(lat, 0.5))
	out.RenewalP99Ms = ms(percentile(lat, 0.99))
	if len(lat) > 0 {
		out.RenewalMaxMs = ms(lat[len(lat)-1])
	}
	for _, l := range locks {
		if l.Err() != nil {
			out.LocksLost++
		}
	}
	e.report(Progress{Step: step + 2, Steps: steps, What: what, Elapsed: elapsed, Count: out.Renewals, Rate: out.RenewalsPerSecond, Done: true})

	closeStart := time.Now()
	var ci atomic.Int64
	_ = parallel(context.Background(), 16, func(context.Context) error {
		for {
			i := int(ci.Add(1)) - 1
			if i >= n {
				return nil
			}
			_ = clients[i].Close()
			clients[i] = nil
		}
	})
	out.CloseSeconds = time.Since(closeStart).Seconds()
	return out, nil
}

// stepProgress reports the progress of one step: see [env.begin].
type stepProgress struct {
	e           *env
	step, steps int
	what        string
	start       time.Time
}

// begin reports the start of step and returns its reporter.
func (e *env) begin(step, steps int, what string) *stepProgress {
	e.report(Progress{Step: step, Steps: steps, What: what})
	return &stepProgress{e: e, step: step, steps: steps, what: what, start: time.Now()}
}

// at reports count things done since the step began; done: it ended.
func (p *stepProgress) at(count int64, done bool) { p.report(time.Since(p.start), count, done) }

// every returns a func that reports its count when it is a multiple of k.
func (p *stepProgress) every(k int64) func(count int64) {
	return func(count int64) {
		if count%k == 0 {
			p.at(count, false)
		}
	}
}

// report reports count things done in elapsed; done: the step ended.
func (p *stepProgress) report(elapsed time.Duration, count int64, done bool) {
	p.e.report(Progress{Step: p.step, Steps: p.steps, What: p.what, Elapsed: elapsed, Count: count,
		Rate: float64(count) / max(elapsed.Seconds(), 1e-9), Done: done})
}

// forEach calls fn(ctx, i) for every i from 0 to n-1 in k goroutines and
// returns the first error (the others' ctx is cancelled then). After each
// call that succeeded it calls done, if not nil, with the number so far.
func forEach(ctx context.Context, k, n int, fn func(ctx context.Context, i int) error, done func(d int64)) error {
	var next, count atomic.Int64
	return parallel(ctx, k, func(ctx context.Context) error {
		for {
			i := int(next.Add(1)) - 1
			if i >= n {
				return nil
			}
			if err := fn(ctx, i); err != nil {
				return err
			}
			if d := count.Add(1); done != nil {
				done(d)
			}
		}
	})
}

// parallel runs fn in k goroutines and returns the first error; the
// others' ctx is cancelled then.
func parallel(ctx context.Context, k int, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	return first
}
