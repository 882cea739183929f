package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// A worker takes and releases one lock, over and over.
type worker interface {
	lock(ctx context.Context) error
	unlock(ctx context.Context) error
}

// cellResult is what one run of one cell measured. Durations are sorted.
type cellResult struct {
	seconds    float64 // the measured window
	pairs      int64   // pairs whose release returned within the window
	latency    []time.Duration
	wait       []time.Duration
	handovers  []time.Duration // hot exclusive only
	dbCPU      time.Duration
	dbCPUOK    bool
	selfCPU    time.Duration
	selfCPUOK  bool
	statements int64
	prepares   int64
	errors     int64
	lastErr    error
}

func (r *cellResult) rate() float64 {
	if r.seconds <= 0 {
		return 0
	}
	return float64(r.pairs) / r.seconds
}

// drainLimit bounds how long the workers may take to finish their last
// pair after the window closes.
const drainLimit = time.Minute

// maxErrors ends a cell whose workers keep failing.
const maxErrors = 1000

// runCell runs workers for warmup, then measures for duration: the pairs
// whose release returns within the window count, each with its latency
// (acquire call to release return) and its wait (the acquire call). With
// track, grants and releases of an exclusive lock are paired to measure
// handovers. progress, if not nil, is called about every 250ms with the
// time measured so far and the pairs counted.
func runCell(ctx context.Context, workers []worker, counter *stmtCounter, cpu *cpuSampler, track bool,
	warmup, duration time.Duration, progress func(elapsed time.Duration, pairs int64),
) (*cellResult, error) {
	cctx, cancel := context.WithTimeout(ctx, warmup+duration+drainLimit)
	defer cancel()
	start := time.Now()
	from, end := start.Add(warmup), start.Add(warmup+duration)
	var ho *handoverTracker
	if track {
		ho = &handoverTracker{from: from, end: end}
	}
	res := &cellResult{seconds: duration.Seconds()}
	var (
		counted  atomic.Int64
		errCount atomic.Int64
		errMu    sync.Mutex
		wg       sync.WaitGroup
		lat      = make([][]time.Duration, len(workers))
		wait     = make([][]time.Duration, len(workers))
	)
	// tooMany records a worker's error and reports whether the cell has
	// seen enough of them to stop (it then cancels the cell).
	tooMany := func(err error) bool {
		errMu.Lock()
		res.lastErr = err
		errMu.Unlock()
		if errCount.Add(1) >= maxErrors {
			cancel()
			return true
		}
		return false
	}
	for i, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				t0 := time.Now()
				if !t0.Before(end) || cctx.Err() != nil {
					return
				}
				if err := w.lock(cctx); err != nil {
					if cctx.Err() != nil {
						return
					}
					if tooMany(err) {
						return
					}
					time.Sleep(time.Millisecond)
					continue
				}
				t1 := time.Now()
				if ho != nil {
					ho.granted(t0, t1)
				}
				err := w.unlock(cctx)
				t2 := time.Now()
				if ho != nil {
					ho.released(t2)
				}
				if err != nil {
					if tooMany(err) {
						return
					}
					continue
				}
				if !t2.Before(from) && !t2.After(end) {
					counted.Add(1)
					lat[i] = append(lat[i], t2.Sub(t0))
					wait[i] = append(wait[i], t1.Sub(t0))
				}
			}
		}()
	}

	// Sample the counters at the window's edges while the workers run.
	type snap struct {
		db, self        time.Duration
		dbOK, selfOK    bool
		stmts, prepares int64
	}
	take := func() snap {
		var s snap
		if cpu != nil {
			d, err := cpu.sample()
			s.db, s.dbOK = d, err == nil
		}
		s.self, s.selfOK = selfCPU()
		if counter != nil {
			s.stmts, s.prepares = counter.load()
		}
		return s
	}
	var first, last snap
	sleepUntil := func(t time.Time, tick func()) bool {
		for {
			d := time.Until(t)
			if d <= 0 {
				return true
			}
			timer := time.NewTimer(min(d, 250*time.Millisecond))
			select {
			case <-cctx.Done():
				timer.Stop()
				return false
			case <-timer.C:
			}
			if tick != nil {
				tick()
			}
		}
	}
	report := func() {
		if progress != nil {
			progress(max(time.Since(from), 0), counted.Load())
		}
	}
	if sleepUntil(from, report) {
		first = take()
		if sleepUntil(end, report) {
			last = take()
		}
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res.errors = errCount.Load()
	if res.errors >= maxErrors {
		return nil, fmt.Errorf("%d errors, the last: %w", res.errors, res.lastErr)
	}
	if errors.Is(cctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("the workers did not finish within %s of the window's end", drainLimit)
	}
	res.pairs = counted.Load()
	for i := range workers {
		res.latency = append(res.latency, lat[i]...)
		res.wait = append(res.wait, wait[i]...)
	}
	slices.Sort(res.latency)
	slices.Sort(res.wait)
	if ho != nil {
		res.handovers = ho.samples
		slices.Sort(res.handovers)
	}
	res.dbCPU, res.dbCPUOK = last.db-first.db, first.dbOK && last.dbOK
	res.selfCPU, res.selfCPUOK = last.self-first.self, first.selfOK && last.selfOK
	res.statements, res.prepares = last.stmts-first.stmts, last.prepares-first.prepares
	if progress != nil {
		progress(duration, res.pairs)
	}
	return res, nil
}

// handoverTracker measures, on an exclusive lock, the time from a release
// returning to the grant of a waiter returning. Grants and releases of an
// exclusive lock alternate: grant n follows release n-1. A grant is a
// handover when its acquire call began before release n-1 returned: the
// caller was waiting while the lock was held. (If the grant returns before
// that release's call does, the handover counts as 0.)
type handoverTracker struct {
	from, end time.Time

	mu          sync.Mutex
	grants      int64
	releases    int64
	lastRelease time.Time
	samples     []time.Duration
}

func (h *handoverTracker) granted(asked, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.grants
	h.grants++
	if n == 0 || now.Before(h.from) || now.After(h.end) {
		return
	}
	switch {
	case h.releases < n:
		h.samples = append(h.samples, 0) // release n-1 has not returned yet
	case asked.Before(h.lastRelease):
		h.samples = append(h.samples, now.Sub(h.lastRelease))
	}
}

func (h *handoverTracker) released(now time.Time) {
	h.mu.Lock()
	h.releases++
	h.lastRelease = now
	h.mu.Unlock()
}

// percentile returns the nearest-rank p-quantile (0 < p <= 1) of sorted.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
