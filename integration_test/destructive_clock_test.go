//go:build linux

package integration_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// S14: the database server's clock jumps (libfaketime preloaded into a
// throwaway server: clock_timestamp() on PostgreSQL, SYSDATE(6) on MariaDB
// under libfaketimeMT).
//
// Forward by two TTLs: every lease expires at once by server time, so others
// may take the names over before the holders' local deadlines; that breaks
// "the holder knows first" (the documented caveat: such violations are
// counted and logged, not asserted). What must hold is fencing: no fenced
// write begun after the jump by an old holder commits (its Fence fails with
// ErrLost), the journal of each name never goes back to an older token, and
// the names are granted again.
//
// Backward by an hour: nothing is granted that should not be (a live
// holder keeps its lock and its fenced writes); a holder that dies right
// after the jump keeps its name until its lease expires by the server's
// clock, an hour later (liveness is delayed, safety is not touched). When
// the clock heals (a forward step back to real time) the name is granted
// within the TTL plus slack.
//
// The client's clock: the library measures its trust deadlines with Go's
// monotonic clock and takes every expiry decision with the server's clock,
// so a step of the client's wall clock changes nothing it computes. Such a
// step cannot be injected into this Go process without changing the system
// clock (libfaketime does not reach Go, which reads the time through the
// vDSO), which would disturb every other test on the machine; it is not
// simulated here.
func TestDestructiveServerClockJump(t *testing.T) {
	if testing.Short() {
		t.Skip("S14 steps the clock of a throwaway database server")
	}
	t.Parallel()
	for _, kind := range destructiveKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			began := time.Now()
			inst, db := setupInstance(t, kind, dbinstance.Options{FakeTime: true})
			t.Run("forward", func(t *testing.T) { clockForward(t, kind, inst, db) })
			require.NoError(t, inst.SetClockOffset(0))
			t.Run("backward", func(t *testing.T) { clockBackward(t, kind, inst, db) })
			t.Logf("%s: S14 took %s", kind, time.Since(began).Round(time.Millisecond))
		})
	}
}

func clockForward(t *testing.T, kind string, inst *dbinstance.Instance, db *testdb.DB) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ttl := destructiveTTL
	names := []string{"k/f0", "k/f1", "k/fidle"}
	writing := func(k int) bool { return k < 2 }

	// The old holders: one client each; two write under the lock until
	// their Fence fails, the third only holds its lock (it learns of the
	// loss from its heartbeat alone).
	type attempt struct {
		started time.Time
		err     error
	}
	olds := make([]*sqldlm.Lock, len(names))
	attempts := make([][]attempt, len(names))
	stop := make(chan struct{})
	var writers sync.WaitGroup
	for k, name := range names {
		c := instClient(t, db, sqldlm.Config{Owner: "old-" + name})
		l, err := c.Lock(ctx, name, sqldlm.Exclusive)
		require.NoError(t, err)
		olds[k] = l
		if !writing(k) {
			continue
		}
		writers.Go(func() {
			for {
				started := time.Now()
				err := fencedWrite(ctx, db.DB, kind, l, "old")
				attempts[k] = append(attempts[k], attempt{started, err})
				if errors.Is(err, sqldlm.ErrLost) {
					return
				}
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		})
	}
	// The contenders wait for the names; once granted, they write too.
	contender := instClient(t, db, sqldlm.Config{Owner: "new"})
	grantAt := make([]time.Time, len(names))
	news := make([]*sqldlm.Lock, len(names))
	newErrs := make([]error, len(names))
	var grabbers sync.WaitGroup
	for k, name := range names {
		grabbers.Go(func() {
			for ctx.Err() == nil {
				// A lease that dies while its Lock waits makes the Lock fail:
				// ask again.
				l, err := contender.Lock(ctx, name, sqldlm.Exclusive)
				if err != nil {
					continue
				}
				grantAt[k], news[k] = time.Now(), l
				for range 5 {
					if newErrs[k] = fencedWrite(ctx, db.DB, kind, l, "new"); newErrs[k] != nil {
						return
					}
				}
				return
			}
		})
	}
	stopWriters := sync.OnceFunc(func() { close(stop); writers.Wait() })
	defer func() {
		// On failure too: no goroutine of this phase outlives it.
		cancel()
		stopWriters()
		grabbers.Wait()
	}()
	lostAt := make([]time.Time, len(names))
	var watchers sync.WaitGroup
	for k, l := range olds {
		watchers.Go(func() { lostAt[k] = waitDone(l, time.Minute) })
	}

	// Let both sides settle (the old holders writing, the contenders
	// queued), then step the server's clock forward by two TTLs.
	require.Eventually(t, func() bool {
		ls, err := contender.Locks(ctx, sqldlm.Filter{Prefix: "k/f"})
		if err != nil {
			return false
		}
		waiting := 0
		for _, li := range ls {
			waiting += len(li.Waiters)
		}
		return waiting == len(names)
	}, 30*time.Second, 20*time.Millisecond, "the contenders are queued")
	require.NoError(t, inst.SetClockOffset(2*ttl))
	jumpedAt := time.Now()

	grabbers.Wait()
	watchers.Wait()
	stopWriters()

	violations := 0
	for k, name := range names {
		require.NotNil(t, news[k], "%s is granted again after the jump", name)
		require.NoError(t, newErrs[k], "%s: the new holder's fenced writes commit", name)
		require.Greater(t, news[k].Token(), olds[k].Token())
		require.LessOrEqual(t, grantAt[k].Sub(jumpedAt), ttl+10*time.Second, "%s: granted again soon after the jump", name)
		require.False(t, lostAt[k].IsZero(), "%s: the old holder learned of the loss", name)
		require.ErrorIs(t, olds[k].Err(), sqldlm.ErrLost)
		if writing(k) {
			last := attempts[k][len(attempts[k])-1]
			require.ErrorIs(t, last.err, sqldlm.ErrLost, "%s: the old holder's Fence fails", name)
		} else {
			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.ErrorIs(t, olds[k].Fence(ctx, tx), sqldlm.ErrLost, "%s: the old holder's Fence fails", name)
			require.NoError(t, tx.Rollback())
		}
		for _, a := range attempts[k] {
			if a.started.After(jumpedAt) {
				require.Error(t, a.err, "%s: a fenced write begun %s after the jump by the old holder committed",
					name, a.started.Sub(jumpedAt))
			}
		}
		rows := checkJournal(t, ctx, db.DB, kind, name)
		require.Equal(t, "new", rows[len(rows)-1].writer)
		if lostAt[k].After(grantAt[k]) {
			violations++
			t.Logf("%s: %s granted again %s before its old holder knew it lost it (server clock stepped forward: documented)",
				kind, name, lostAt[k].Sub(grantAt[k]).Round(time.Millisecond))
		}
		require.NoError(t, news[k].Release(ctx))
	}
	t.Logf("%s: forward jump of %s: %d of %d names granted again before their old holder knew (not asserted); fencing held for all",
		kind, 2*ttl, violations, len(names))
}

func clockBackward(t *testing.T, kind string, inst *dbinstance.Instance, db *testdb.DB) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ttl := destructiveTTL

	// A live holder in this process, and a holder in a child process that
	// dies right before the jump.
	liveClient := instClient(t, db, sqldlm.Config{Owner: "live"})
	live, err := liveClient.Lock(ctx, "k/live", sqldlm.Exclusive)
	require.NoError(t, err)
	child := startChild(t, db, "holder", "k/dead", "dead", ttl, 0)
	child.expect("granted", 30*time.Second)
	losses := newHookRecorder()
	other := instClient(t, db, sqldlm.Config{Owner: "other", Hooks: losses})
	// A round trip now, so that other's lease exists before the jump.
	_, err = other.TryLock(ctx, "k/dead", sqldlm.Exclusive)
	require.ErrorIs(t, err, sqldlm.ErrLocked)

	require.NoError(t, child.cmd.Process.Signal(syscall.SIGKILL))
	require.NoError(t, inst.SetClockOffset(-time.Hour))
	jumpedAt := time.Now()

	// For three TTLs: the live holder keeps its lock and writes under it;
	// neither name is granted to anyone else.
	writes, failed := 0, 0
	var firstFailure error
	for time.Since(jumpedAt) < 3*ttl {
		// A fenced transaction may fail without the lock being lost (once,
		// a pooled PostgreSQL connection ended by the server's
		// idle-in-transaction timeout, after an earlier failure left
		// goroutines behind); ErrLost is the wrong answer checked here.
		if err := fencedWrite(ctx, db.DB, kind, live, "live"); err != nil {
			require.NotErrorIs(t, err, sqldlm.ErrLost, "the live holder's lock is lost after a backward jump")
			failed++
			firstFailure = cmp.Or(firstFailure, err)
		} else {
			writes++
		}
		for _, name := range []string{"k/live", "k/dead"} {
			_, err := other.TryLock(ctx, name, sqldlm.Exclusive)
			require.ErrorIs(t, err, sqldlm.ErrLocked, "%s granted %s after a backward jump", name, time.Since(jumpedAt))
		}
		time.Sleep(100 * time.Millisecond) // pacing of the probes
	}
	require.NoError(t, live.Err())
	require.Positive(t, writes)
	if failed > 0 {
		t.Logf("%s: %d fenced transactions of the live holder failed after the backward jump, the first with: %v", kind, failed, firstFailure)
	}
	require.NoError(t, live.Release(ctx), "released before the clock heals (the heal is a forward step)")
	checkJournal(t, ctx, db.DB, kind, "k/live")

	// Heal: the dead holder's lease now expires by the server's clock, and
	// the name is granted within the TTL plus slack.
	lostBefore := losses.lossCount()
	require.NoError(t, inst.SetClockOffset(0))
	healedAt := time.Now()
	var got *sqldlm.Lock
	for got == nil && time.Since(healedAt) < ttl+10*time.Second {
		lctx, lcancel := context.WithTimeout(ctx, ttl+10*time.Second-time.Since(healedAt))
		got, err = other.Lock(lctx, "k/dead", sqldlm.Exclusive)
		lcancel()
		if err != nil && !errors.Is(err, sqldlm.ErrLost) {
			// The heal is a forward step for other's own lease too: a lost
			// lease makes one Lock fail; another is not expected to fail.
			require.NoError(t, err)
		}
	}
	require.NotNil(t, got, "k/dead granted within TTL + slack of the heal")
	// The takeover of the dead holder's lock is reported, unless other's
	// own lease was lost in the heal: a grant made under it (which took
	// the name over) goes with it, and the Lock, failing or asking again
	// under a new lease, finds the name free, or takes it over from
	// other's old lease if that expired before its deletion (seen twice in
	// clean-clone runs, once with the Lock failing, once with it asking
	// again itself).
	tk := got.Takeover()
	switch lost := losses.lossCount() - lostBefore; {
	case lost == 0:
		require.NotNil(t, tk, "the takeover of the dead holder's lock is reported")
		require.Equal(t, "dead", tk.Owner)
	case tk != nil:
		require.Contains(t, []string{"dead", "other"}, tk.Owner, "taken over after other lost %d leases in the heal", lost)
	}
	require.NoError(t, got.Release(ctx))
	t.Logf("%s: backward jump of 1h: %d fenced writes by the live holder, no grant for %s; after the heal, the dead holder's name granted in %s",
		kind, writes, fmt.Sprint(3*ttl), time.Since(healedAt).Round(time.Millisecond))
}
