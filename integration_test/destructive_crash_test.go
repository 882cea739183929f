//go:build linux

package integration_test

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/reaper"
)

// S13: the database server is killed with SIGKILL in the middle of a load of
// fenced writes (fsync on), restarted through crash recovery, then the idle
// name rows and every hold are garbage-collected, the server is killed and
// restarted once more, and the names are acquired again.
//
// Checker: every token granted after a restart is greater than every token
// acknowledged before it, also for names whose rows were collected (the
// high-water mark lives in the token sequence, not in the deleted rows); no
// acknowledged fenced transaction is lost; the journal of each name is
// numbered without gap, matches its counter, and its tokens never decrease.
func TestDestructiveServerCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("S13 kills and restarts a throwaway database server twice")
	}
	t.Parallel()
	for _, kind := range destructiveKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			began := time.Now()
			inst, db := setupInstance(t, kind, dbinstance.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			ttl := destructiveTTL
			names := []string{"c/n0", "c/n1", "c/n2", "c/n3"}

			type grant struct {
				name   string
				token  int64
				called time.Time // when the Lock call began
			}
			type ack struct {
				name  string
				token int64
				at    time.Time // when the fenced commit returned nil
			}
			var (
				mu                  sync.Mutex
				grants              []grant
				acks                []ack
				lockErrs, writeErrs int // attempts the outage made fail
			)
			countAcks := func(after time.Time) int {
				mu.Lock()
				defer mu.Unlock()
				n := 0
				for _, a := range acks {
					if a.at.After(after) {
						n++
					}
				}
				return n
			}

			// Three clients, two workers each: lock a random name, make one
			// fenced write, release; errors (the server is down) are retried.
			const clients, perClient = 3, 2
			stop := make(chan struct{})
			var workers sync.WaitGroup
			var clientList []*sqldlm.Client
			for i := range clients {
				c := instClient(t, db, sqldlm.Config{Owner: fmt.Sprintf("worker-%d", i)})
				clientList = append(clientList, c)
				for w := range perClient {
					owner := fmt.Sprintf("w%d.%d", i, w)
					workers.Go(func() {
						for {
							select {
							case <-stop:
								return
							default:
							}
							name := names[rand.IntN(len(names))]
							called := time.Now()
							lctx, lcancel := context.WithTimeout(ctx, 3*ttl)
							l, err := c.Lock(lctx, name, sqldlm.Exclusive)
							lcancel()
							if err != nil {
								mu.Lock()
								lockErrs++
								mu.Unlock()
								time.Sleep(20 * time.Millisecond) // back off while the server is down
								continue
							}
							mu.Lock()
							grants = append(grants, grant{name, l.Token(), called})
							mu.Unlock()
							wctx, wcancel := context.WithTimeout(ctx, 3*ttl)
							err = fencedWrite(wctx, db.DB, kind, l, owner)
							mu.Lock()
							if err == nil {
								acks = append(acks, ack{name, l.Token(), time.Now()})
							} else {
								writeErrs++
							}
							mu.Unlock()
							_ = l.Release(wctx)
							wcancel()
						}
					})
				}
			}
			stopWorkers := sync.OnceFunc(func() { close(stop); workers.Wait() })
			defer stopWorkers()

			require.Eventually(t, func() bool { return countAcks(time.Time{}) >= 20 }, time.Minute, 10*time.Millisecond,
				"fenced writes before the crash")
			crashAt := time.Now()
			inst.Crash()
			down := time.Now()
			require.NoError(t, inst.Start())
			restartedAt := time.Now()
			dropIdle(db.DB)
			require.Eventually(t, func() bool { return countAcks(restartedAt) >= 20 }, time.Minute, 10*time.Millisecond,
				"fenced writes after the restart")
			stopWorkers()

			mu.Lock()
			var ackedBefore int64
			ackedBeforeN := 0
			for _, a := range acks {
				if a.at.Before(crashAt) {
					ackedBefore = max(ackedBefore, a.token)
					ackedBeforeN++
				}
			}
			var allMax int64
			grantedAfter := 0
			firstAfter := int64(-1)
			for _, g := range grants {
				allMax = max(allMax, g.token)
				if g.called.After(restartedAt) {
					grantedAfter++
					if firstAfter < 0 || g.token < firstAfter {
						firstAfter = g.token
					}
					require.Greater(t, g.token, ackedBefore,
						"%s: token %d granted after the restart is not above %d, acknowledged before the crash", g.name, g.token, ackedBefore)
				}
			}
			ackedTokens := map[string]map[int64]bool{}
			for _, a := range acks {
				if ackedTokens[a.name] == nil {
					ackedTokens[a.name] = map[int64]bool{}
				}
				ackedTokens[a.name][a.token] = true
			}
			totalAcks := len(acks)
			t.Logf("%s: failed attempts during the outage: %d Lock, %d fenced writes", kind, lockErrs, writeErrs)
			mu.Unlock()
			require.Positive(t, grantedAfter)

			// No acknowledged fenced transaction is lost; the journal holds.
			journalRows := 0
			for _, name := range names {
				rows := checkJournal(t, ctx, db.DB, kind, name)
				journalRows += len(rows)
				inJournal := map[int64]bool{}
				for _, r := range rows {
					inJournal[r.token] = true
				}
				for tok := range ackedTokens[name] {
					require.True(t, inJournal[tok], "%s: the fenced write acknowledged under token %d is lost", name, tok)
				}
			}
			t.Logf("%s: %d fenced writes acknowledged (%d before the crash, highest token %d; lowest token granted after the restart %d), %d journal rows; kill -9 to answering again: %s",
				kind, totalAcks, ackedBeforeN, ackedBefore, firstAfter, journalRows, restartedAt.Sub(down).Round(time.Millisecond))

			// Garbage-collect every hold and name row, then crash again, so
			// that nothing but the token sequence remembers the tokens.
			for _, c := range clientList {
				require.NoError(t, c.Close())
			}
			r := reaper.New(db.DB, db.Dialect, reaper.Config{IdleAfter: time.Millisecond})
			idle := 0
			require.Eventually(t, func() bool {
				res, err := r.RunOnce(ctx)
				if err != nil {
					t.Logf("reap: %v", err)
					return false
				}
				idle += res.IdleLocks
				var rows int
				if err := db.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM sqldlm_locks) + (SELECT COUNT(*) FROM sqldlm_holders)`).Scan(&rows); err != nil {
					t.Logf("count: %v", err)
					return false
				}
				return rows == 0
			}, 2*ttl+20*time.Second, 100*time.Millisecond, "every name row and hold is collected")
			require.GreaterOrEqual(t, idle, len(names), "the reaper collected the idle name rows")

			inst.Crash()
			require.NoError(t, inst.Start())
			dropIdle(db.DB)
			c := instClient(t, db, sqldlm.Config{Owner: "after-gc"})
			var firstAfterGC int64
			for _, name := range names {
				l, err := c.Lock(ctx, name, sqldlm.Exclusive)
				require.NoError(t, err)
				require.Greater(t, l.Token(), allMax,
					"%s: token %d after garbage collection and a crash is not above %d, granted earlier", name, l.Token(), allMax)
				firstAfterGC = cmp.Or(firstAfterGC, l.Token())
				require.NoError(t, fencedWrite(ctx, db.DB, kind, l, "after-gc"))
				require.NoError(t, l.Release(ctx))
				checkJournal(t, ctx, db.DB, kind, name)
			}
			t.Logf("%s: after garbage collection and a second crash, tokens resume at %d (highest before: %d); S13 took %s",
				kind, firstAfterGC, allMax, time.Since(began).Round(time.Millisecond))
		})
	}
}
