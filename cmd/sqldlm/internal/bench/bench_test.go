package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// The benchmarks measure acquire+release pairs: one op is one pair, so
// ns/op is wall time per pair over all workers, and with -benchmem allocs/op
// and B/op are the allocations of one pair (the driver's included; compare
// with the floors, which allocate only in the driver). They also report
// pairs/s and the statements sent per pair.
//
//	go test -run '^$' -bench . -benchmem ./bench/
//
// PostgreSQL and MySQL run when SQLDLM_TEST_POSTGRES_DSN and
// SQLDLM_TEST_MYSQL_DSN are set (see internal/testdb). `sqldlm bench` runs
// the same cells for a fixed time, with latencies, handovers and the
// server's CPU.

// benchWorkloads are the workloads the Go benchmarks run.
var benchWorkloads = []Workload{{Hot: false}, {Hot: false, Shared: true}, {Hot: true}}

// BenchmarkSqldlm measures Client.Lock + Lock.Release.
func BenchmarkSqldlm(b *testing.B) { benchImpl(b, ImplSqldlm) }

// BenchmarkFloorTwoCommit measures an autocommit INSERT of a lock row and
// its DELETE (waiters poll).
func BenchmarkFloorTwoCommit(b *testing.B) { benchImpl(b, ImplTwoCommit) }

// BenchmarkFloorAdvisory measures pg_advisory_lock/unlock (PostgreSQL) and
// GET_LOCK/RELEASE_LOCK (MySQL).
func BenchmarkFloorAdvisory(b *testing.B) { benchImpl(b, ImplAdvisory) }

func benchImpl(b *testing.B, impl string) {
	for _, kind := range testdb.Kinds {
		b.Run(kind, func(b *testing.B) {
			e := benchEnv(b, kind)
			for _, wl := range benchWorkloads {
				if !e.supports(impl, wl) {
					continue
				}
				for _, workers := range []int{1, 8} {
					b.Run(fmt.Sprintf("%s/workers=%d", wl.Name(), workers), func(b *testing.B) {
						benchCell(b, e, wl, workers, impl)
					})
				}
			}
		})
	}
}

// benchEnv returns a migrated database of kind with the floor's table.
func benchEnv(b *testing.B, kind string) *env {
	b.Helper()
	db := testdb.OpenMigrated(b, kind)
	cfg, err := Config{DSN: db.DSN}.withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	e, _, err := newEnv(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.createFloor(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.dropFloor)
	return e
}

var benchTags atomic.Int64

// benchCell runs b.N pairs spread over workers.
func benchCell(b *testing.B, e *env, wl Workload, workers int, impl string) {
	ctx := context.Background()
	s, err := e.setup(ctx, wl, workers, impl, fmt.Sprintf("b%d", benchTags.Add(1)))
	if err != nil {
		b.Fatal(err)
	}
	defer s.close()
	for _, w := range s.workers { // connections, leases, lock rows
		if err := w.lock(ctx); err != nil {
			b.Fatal(err)
		}
		if err := w.unlock(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var (
		next   atomic.Int64
		failed atomic.Value
		wg     sync.WaitGroup
	)
	stmts0, _ := s.counter.load()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for _, w := range s.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := w.lock(ctx); err != nil {
					failed.Store(err)
					return
				}
				if err := w.unlock(ctx); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
	stmts1, _ := s.counter.load()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "pairs/s")
	b.ReportMetric(float64(stmts1-stmts0)/float64(b.N), "stmts/pair")
}
