package integration_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/reaper"
)

// S19: reaper races and garbage collection, on the storage operations.
// (1) Three reapers (each on its own pool, as three clients' would be) run
// while a holder renews its lease within a few ms of its expiry: no
// renewal that starts after a reaper deleted the lease succeeds, and a
// renewal that succeeded keeps its hold; no reaper pass fails (no deadlock
// leaks out). (2) The three reapers collect idle lock rows (idle after 1ns)
// while a client grants and releases the same names over and over: no
// name is ever granted twice at once, and its tokens strictly increase,
// also after its row was collected.
func TestS19ReaperRaces(t *testing.T) {
	t.Parallel()
	skipShort(t)
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			d := db.Dialect
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			newLease := func(owner string, ttl time.Duration) int64 {
				id := rand.Int64()
				require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: id, Owner: owner, TTL: ttl}))
				return id
			}
			var reapers []*reaper.Reaper
			for range 3 {
				p := testdb.Reopen(t, kind, db.DSN)
				reapers = append(reapers, reaper.New(p.DB, d, reaper.Config{Interval: time.Hour, IdleAfter: time.Nanosecond}))
			}
			var reapErrs, busy atomic.Int64
			// runReapers runs the three reapers, pass after pass, until the
			// returned function is called.
			runReapers := func(onPass func(reaper.Result, time.Time)) func() {
				stop := make(chan struct{})
				var wg sync.WaitGroup
				for _, r := range reapers {
					wg.Go(func() {
						for {
							select {
							case <-stop:
								return
							case <-time.After(time.Duration(rand.IntN(3000)) * time.Microsecond): // between passes
							}
							res, err := r.RunOnce(ctx)
							if dialect.IsRetryable(err) {
								busy.Add(1) // a background pass: the next one retries
								continue
							}
							if err != nil {
								reapErrs.Add(1)
								t.Errorf("a reaper pass failed: %v", err)
								return
							}
							if onPass != nil {
								onPass(res, time.Now())
							}
						}
					})
				}
				var once sync.Once
				stopAll := func() {
					once.Do(func() {
						close(stop)
						wg.Wait()
					})
				}
				t.Cleanup(stopAll)
				return stopAll
			}

			// (1) Renewals at the edge of expiry against three reapers.
			renewPool := testdb.Reopen(t, kind, db.DSN)
			const ttl = 300 * time.Millisecond
			// SQLite's single writer makes each round slow: fewer of them.
			rounds, grants := 10, 150
			if kind == testdb.SQLite {
				rounds, grants = 4, 50
			}
			reapedRounds := 0
			for round := range rounds {
				name := fmt.Sprintf("s19/renew/%d", round)
				holder := newLease("holder", ttl)
				res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: holder, RequestID: rand.Int64(), Mode: dialect.Exclusive})
				require.NoError(t, err)
				require.Equal(t, dialect.Granted, res.Status)
				time.Sleep(ttl - 40*time.Millisecond + time.Duration(rand.IntN(30))*time.Millisecond) // close to expiry

				var mu sync.Mutex
				var reapedAt time.Time // when a pass that deleted a lease returned
				stopReapers := runReapers(func(r reaper.Result, at time.Time) {
					if r.Leases > 0 {
						mu.Lock()
						if reapedAt.IsZero() {
							reapedAt = at
						}
						mu.Unlock()
					}
				})
				type renewal struct {
					start time.Time
					ok    bool
				}
				var renewals []renewal
				for range 8 {
					start := time.Now()
					ok, err := d.RenewLease(ctx, renewPool.DB, holder)
					if err != nil && !dialect.IsRetryable(err) {
						t.Fatalf("renew: %v", err)
					}
					renewals = append(renewals, renewal{start, ok})
					time.Sleep(3 * time.Millisecond) // spacing of the renewals
				}
				// Then no more renewals: the lease expires for good and is reaped.
				time.Sleep(ttl + 100*time.Millisecond)
				stopReapers()
				exists := count(t, db, `SELECT COUNT(*) FROM sqldlm_leases WHERE id = ?`, holder) == 1
				holds := count(t, db, `SELECT COUNT(*) FROM `+testdb.Holds(db.Kind)+` WHERE lease_id = ?`, holder)
				require.False(t, exists, "round %d: the lease was never reaped", round)
				require.Zero(t, holds, "round %d: a hold outlived its reaped lease", round)
				require.False(t, reapedAt.IsZero())
				for _, r := range renewals {
					require.False(t, r.ok && r.start.After(reapedAt), "round %d: a renewal that started after the lease was reaped succeeded", round)
				}
				if !renewals[0].ok {
					reapedRounds++ // the reapers won at the edge
				}
			}
			t.Logf("%s: in %d of %d rounds the reapers won the first renewal's race", kind, reapedRounds, rounds)

			// (2) Garbage collection of idle lock rows against new grants.
			owner := newLease("grantor", time.Minute)
			var collected atomic.Int64
			stopReapers := runReapers(func(r reaper.Result, _ time.Time) { collected.Add(int64(r.IdleLocks)) })
			last := map[string]int64{}
			for i := range grants {
				name := fmt.Sprintf("s19/gc/%d", i%3)
				var res *dialect.AcquireResult
				for {
					var err error
					res, err = d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: owner, RequestID: rand.Int64(), Mode: dialect.Exclusive})
					if err == nil {
						break
					}
					require.True(t, dialect.IsRetryable(err), "acquire: %v", err)
				}
				require.Equal(t, dialect.Granted, res.Status, "%s is free: granted at once", name)
				require.Equal(t, 1, count(t, db, `SELECT COUNT(*) FROM `+testdb.Holds(db.Kind)+` WHERE name = ?`, name), "no double grant")
				require.Greater(t, res.Token, last[name], "%s: tokens strictly increase, also after its row was collected", name)
				last[name] = res.Token
				for {
					ok, err := d.Release(ctx, db.DB, &dialect.HoldRef{Name: name, LeaseID: owner, Token: res.Token})
					if err == nil {
						require.True(t, ok)
						break
					}
					require.True(t, dialect.IsRetryable(err), "release: %v", err)
				}
			}
			stopReapers()
			t.Logf("%s: %d reaper passes failed with a retryable error (busy, deadlock) and were retried", kind, busy.Load())
			t.Logf("%s: %d idle lock rows collected during %d grants", kind, collected.Load(), grants)
			require.Positive(t, collected.Load(), "the collection really ran between grants")
			require.Zero(t, reapErrs.Load())
			require.False(t, errors.Is(ctx.Err(), context.DeadlineExceeded))
		})
	}
}
