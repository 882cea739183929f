package integration_test

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// A member killed with SIGKILL is reported gone to a watcher within its TTL
// plus one watch interval, by the database's clock, with nobody's help
// (the reapers are off), and its id can be joined again with a higher
// incarnation.
func TestKilledMemberLeaves(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			ctx := context.Background()
			const interval = 100 * time.Millisecond
			c := newClient(t, db, sqldlm.Config{TTL: childTTL, ReapInterval: sqldlm.ReapDisabled, WatchInterval: interval})
			m := startChild(t, db, "member", "conductors", "conductor-9", childTTL, 0)
			inc, err := strconv.ParseInt(strings.Fields(m.expect("joined", 30*time.Second))[1], 10, 64)
			require.NoError(t, err)
			w, err := c.Watch(ctx, "conductors")
			require.NoError(t, err)
			defer w.Close()
			e := <-w.Events()
			require.Equal(t, sqldlm.Resync, e.Kind)
			require.Len(t, e.View.Members, 1)

			require.NoError(t, m.cmd.Process.Kill())
			killed := time.Now()
			select {
			case e = <-w.Events():
			case <-time.After(childTTL + 10*time.Second):
				t.Fatal("the killed member was never reported gone")
			}
			t.Logf("%s: SIGKILL to MemberLeft: %s (TTL %s, interval %s)", kind, time.Since(killed).Round(time.Millisecond), childTTL, interval)
			require.Equal(t, sqldlm.MemberLeft, e.Kind)
			require.Equal(t, "conductor-9", e.Member.ID)
			require.Equal(t, inc, e.Member.Incarnation)
			again, err := c.Join(ctx, "conductors", "conductor-9")
			require.NoError(t, err, "a dead member's id is free again")
			require.Greater(t, again.Incarnation(), inc)
		})
	}
}

// A leader killed with SIGKILL is replaced within its TTL plus a little by
// a campaigner that was waiting, with a higher term; a paused leader
// (SIGSTOP past its TTL) is deposed, and once it resumes it knows: its
// Fence fails and none of its writes lands.
func TestKilledAndPausedLeaders(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			ctx := context.Background()
			c := newClient(t, db, sqldlm.Config{TTL: childTTL, ReapInterval: sqldlm.ReapDisabled})
			// An election is the lock ElectionPrefix+NAME: the holder role
			// campaigns by taking it, as Client.Campaign does.
			leader := startChild(t, db, "holder", sqldlm.ElectionPrefix+"scheduler", "sched-1", childTTL, 0)
			term1, err := strconv.ParseInt(strings.Fields(leader.expect("granted", 30*time.Second))[1], 10, 64)
			require.NoError(t, err)
			li, err := c.Leader(ctx, "scheduler")
			require.NoError(t, err)
			require.Equal(t, "sched-1", li.Owner)
			require.Equal(t, term1, li.Term)

			require.NoError(t, leader.cmd.Process.Kill())
			killed := time.Now()
			cctx, cancel := context.WithTimeout(ctx, childTTL+5*time.Second)
			defer cancel()
			ld, err := c.Campaign(cctx, "scheduler", "me")
			require.NoError(t, err, "elected within the TTL plus a little")
			t.Logf("%s: SIGKILL of the leader to a new leader: %s (TTL %s)", kind, time.Since(killed).Round(time.Millisecond), childTTL)
			require.Greater(t, ld.Term(), term1)
			require.NoError(t, ld.Resign(ctx))

			paused := startChild(t, db, "holder", sqldlm.ElectionPrefix+"scheduler", "sched-2", childTTL, 0)
			paused.expect("granted", 30*time.Second)
			require.NoError(t, paused.cmd.Process.Signal(syscall.SIGSTOP))
			ld, err = c.Campaign(cctx, "scheduler", "me")
			require.NoError(t, err)
			require.NoError(t, paused.cmd.Process.Signal(syscall.SIGCONT))
			paused.send("status")
			paused.expect("lost", 10*time.Second)
			paused.send("write")
			paused.expect("lost", 10*time.Second)
			require.NoError(t, ld.Resign(ctx))
		})
	}
}

// A permit holder killed with SIGKILL gives its permit up within its TTL
// plus a little, with nobody's help (the reapers are off): an acquirer
// that was waiting takes over its slot, with a higher token, while the
// other permit holder keeps its own and the limit holds.
func TestKilledPermitHolder(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			ctx := context.Background()
			c := newClient(t, db, sqldlm.Config{TTL: childTTL, ReapInterval: sqldlm.ReapDisabled})
			const limit = 2
			limitEnv := childLimitEnv + "=" + strconv.Itoa(limit)
			var holders [limit]*child
			var tokens, slots [limit]int64
			for i := range holders {
				holders[i] = startChild(t, db, "permit", "ipmi", "permit-"+strconv.Itoa(i), childTTL, 0, limitEnv)
				f := strings.Fields(holders[i].expect("permit", 30*time.Second))
				var err error
				tokens[i], err = strconv.ParseInt(f[1], 10, 64)
				require.NoError(t, err)
				slots[i], err = strconv.ParseInt(f[2], 10, 64)
				require.NoError(t, err)
			}
			sem := c.Semaphore("ipmi", limit)
			_, err := sem.TryAcquire(ctx)
			require.ErrorIs(t, err, sqldlm.ErrLocked, "both permits are held")

			require.NoError(t, holders[0].cmd.Process.Kill())
			killed := time.Now()
			actx, cancel := context.WithTimeout(ctx, childTTL+5*time.Second)
			defer cancel()
			p, err := sem.Acquire(actx)
			require.NoError(t, err, "the killed holder's permit is free within the TTL plus a little")
			t.Logf("%s: SIGKILL of a permit holder to its permit's takeover: %s (TTL %s)", kind, time.Since(killed).Round(time.Millisecond), childTTL)
			require.EqualValues(t, slots[0], p.Slot(), "the dead holder's slot is taken over")
			require.Greater(t, p.Token(), tokens[0])
			holders[1].send("status")
			holders[1].expect("held", 10*time.Second)
			_, err = sem.TryAcquire(ctx)
			require.ErrorIs(t, err, sqldlm.ErrLocked, "the limit holds")
			require.NoError(t, p.Release(ctx))
		})
	}
}
