// Package reaper deletes what dead clients left behind: leases that expired
// (or were broken) with their holds and waiters, in batches, and lock rows
// that have been idle for a while. Tokens never go back when rows are
// deleted: they come from a sequence, not from the rows.
//
// Every sqldlm Client runs a Reaper by default; several reapers on one
// database are safe (each batch skips rows another is working on, where the
// dialect can). Waiters do not depend on it: a waiter blocked by an expired
// holder takes the lock over itself. The reaper frees locks nobody waits for
// and keeps the tables small. It can also run alone, as `sqldlm reap`.
package reaper

import (
	"context"
	"database/sql"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// Defaults of [Config].
const (
	BatchSizeDefault = 500
	IdleAfterDefault = time.Hour
)

// Config configures a Reaper.
type Config struct {
	// Interval between passes; each wait is jittered by ±20%. Required for
	// Start.
	Interval time.Duration
	// BatchSize bounds the leases (and idle lock rows) deleted per
	// statement. Defaults to BatchSizeDefault.
	BatchSize int
	// IdleAfter is how long a lock row with no holder or waiter is kept.
	// Defaults to IdleAfterDefault.
	IdleAfter time.Duration
	// Logger receives a record for each pass that deleted something.
	Logger *slog.Logger
	// OnFreed, if set, is called with the names whose holds a pass deleted
	// (sqldlm wakes its waiters for them).
	OnFreed func(names []string)
	// OnPass, if set, is called with the result of every pass of Start's
	// loop (for metrics).
	OnPass func(Result)
}

// Result sums what a pass deleted.
type Result struct {
	Leases, Holds, Waiters, IdleLocks int
	// AuditRows counts audit rows deleted after their retention.
	AuditRows int
	Freed     []string
}

// Reaper deletes dead leases and idle lock rows. Its methods are safe for
// concurrent use.
type Reaper struct {
	db      *sql.DB
	dialect dialect.Dialect
	cfg     Config

	mu   sync.Mutex
	stop chan struct{}
	done chan struct{}
}

// New returns a Reaper for db.
func New(db *sql.DB, d dialect.Dialect, cfg Config) *Reaper {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = BatchSizeDefault
	}
	if cfg.IdleAfter <= 0 {
		cfg.IdleAfter = IdleAfterDefault
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Reaper{db: db, dialect: d, cfg: cfg}
}

// RunOnce deletes dead leases and idle lock rows, batch after batch, until
// a batch finds less than a full one. It is idempotent.
func (r *Reaper) RunOnce(ctx context.Context) (Result, error) {
	var total Result
	for {
		res, err := r.dialect.Reap(ctx, r.db, r.cfg.BatchSize, r.cfg.IdleAfter)
		if err != nil {
			return total, err
		}
		total.Leases += res.Leases
		total.Holds += res.Holds
		total.Waiters += res.Waiters
		total.IdleLocks += res.IdleLocks
		total.AuditRows += res.AuditRows
		total.Freed = append(total.Freed, res.Freed...)
		if len(res.Freed) > 0 && r.cfg.OnFreed != nil {
			r.cfg.OnFreed(res.Freed)
		}
		if res.Leases < r.cfg.BatchSize && res.IdleLocks < r.cfg.BatchSize && res.AuditRows < r.cfg.BatchSize {
			break
		}
	}
	if total.Leases+total.IdleLocks > 0 {
		r.cfg.Logger.InfoContext(ctx, "sqldlm: reaper freed dead leases",
			"leases", total.Leases, "holds", total.Holds, "waiters", total.Waiters, "idle_locks", total.IdleLocks)
	}
	if total.AuditRows > 0 {
		r.cfg.Logger.DebugContext(ctx, "sqldlm: reaper pruned the audit log", "rows", total.AuditRows)
	}
	return total, nil
}

// Start runs RunOnce in a goroutine: first after a random fraction of the
// interval (so that clients started together spread out), then every
// Interval ±20%, until Stop. Starting a started Reaper does nothing.
func (r *Reaper) Start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stop != nil {
		return
	}
	r.stop, r.done = make(chan struct{}), make(chan struct{})
	go r.loop(r.stop, r.done)
}

// Stop stops the loop started by Start and waits for it. It is idempotent.
func (r *Reaper) Stop() {
	r.mu.Lock()
	stop, done := r.stop, r.done
	r.stop, r.done = nil, nil
	r.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

func (r *Reaper) loop(stop, done chan struct{}) {
	defer close(done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-done:
		}
	}()
	wait := time.Duration(rand.Int64N(int64(r.cfg.Interval) + 1))
	for {
		t := time.NewTimer(wait)
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C:
		}
		res, err := r.RunOnce(ctx)
		if err != nil && ctx.Err() == nil {
			r.cfg.Logger.Debug("sqldlm: reaper pass failed", "error", err)
		}
		if r.cfg.OnPass != nil {
			r.cfg.OnPass(res)
		}
		wait = r.cfg.Interval*4/5 + time.Duration(rand.Int64N(int64(r.cfg.Interval)*2/5+1))
	}
}
