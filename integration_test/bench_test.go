package integration_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// BenchmarkAcquireRelease measures uncontended Lock+Release pairs on
// distinct names, with 1 and 8 goroutines sharing one client (pairs/s is
// reported; ns/op is per pair).
func BenchmarkAcquireRelease(b *testing.B) {
	for _, kind := range testdb.Kinds {
		for _, workers := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/workers=%d", kind, workers), func(b *testing.B) {
				db := testdb.OpenMigrated(b, kind)
				c, err := sqldlm.New(db.DB, sqldlm.Config{TTL: 15 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				db.SetMaxOpenConns(workers + 4)
				ctx := context.Background()
				var next atomic.Int64
				b.SetParallelism(workers)
				b.ResetTimer()
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					name := fmt.Sprintf("bench/%d", next.Add(1))
					for pb.Next() {
						l, err := c.Lock(ctx, name, sqldlm.Exclusive)
						if err != nil {
							b.Error(err)
							return
						}
						if err := l.Release(ctx); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pairs/s")
			})
		}
	}
}

// BenchmarkHandover measures the time from a holder's Release to a waiting
// client (another pool, as another process) being granted the lock.
func BenchmarkHandover(b *testing.B) {
	for _, kind := range testdb.Kinds {
		b.Run(kind, func(b *testing.B) {
			db := testdb.OpenMigrated(b, kind)
			clients := make([]*sqldlm.Client, 2)
			for i := range clients {
				pool := testdb.Reopen(b, kind, db.DSN)
				c, err := sqldlm.New(pool.DB, sqldlm.Config{TTL: 15 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				clients[i] = c
			}
			ctx := context.Background()
			held, err := clients[0].Lock(ctx, "hot", sqldlm.Exclusive)
			if err != nil {
				b.Fatal(err)
			}
			samples := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				waiter := clients[(i+1)%2]
				got := make(chan *sqldlm.Lock, 1)
				waiting := make(chan struct{})
				go func() {
					close(waiting)
					l, err := waiter.Lock(ctx, "hot", sqldlm.Exclusive)
					if err != nil {
						b.Error(err)
					}
					got <- l
				}()
				<-waiting
				time.Sleep(2 * time.Millisecond) // let the waiter block: the measured path is a real wake-up
				released := time.Now()
				if err := held.Release(ctx); err != nil {
					b.Fatal(err)
				}
				held = <-got
				if held == nil {
					return
				}
				samples = append(samples, time.Since(released))
			}
			b.StopTimer()
			slices.Sort(samples)
			if len(samples) > 0 {
				b.ReportMetric(float64(samples[len(samples)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(samples[len(samples)*99/100].Microseconds())/1000, "p99-ms")
			}
		})
	}
}
