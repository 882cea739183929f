package sqldlm

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// At most one leader: a second campaigner waits until the leader resigns,
// then leads with a higher term; Leader reports whoever leads, and
// ErrNoLeader when nobody does.
func TestElectionOneLeader(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, c := b.client(t, Config{Owner: "sched-a"}), b.client(t, Config{Owner: "sched-c"})
		_, err := a.Leader(ctx, "scheduler")
		require.ErrorIs(t, err, ErrNoLeader)

		la, err := a.Campaign(ctx, "scheduler", "http://a")
		require.NoError(t, err)
		require.NoError(t, la.Err())
		info, err := c.Leader(ctx, "scheduler")
		require.NoError(t, err)
		require.Equal(t, LeaderInfo{Owner: "sched-a", Value: "http://a", Term: la.Term(), Since: info.Since}, info)

		elected := make(chan *Leadership, 1)
		go func() {
			lc, err := c.Campaign(ctx, "scheduler", "http://c")
			if err != nil {
				t.Errorf("second campaign: %v", err)
				close(elected)
				return
			}
			elected <- lc
		}()
		// Long enough for the campaign's first attempt to come back (the
		// WaitError names what it read) even on a loaded machine: 300ms was
		// not, once, under the whole suite.
		short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		_, err = c.Campaign(short, "scheduler", "http://c2")
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded, "a third campaign waits while a leader leads")
		var we *WaitError
		require.ErrorAs(t, err, &we)
		require.Equal(t, "sched-a", we.Blocker.Owner, "the refused campaigner is told who leads")
		select {
		case <-elected:
			t.Fatal("elected while another client leads")
		default:
		}

		require.NoError(t, la.Proclaim(ctx, "http://a:9090"))
		info, err = c.Leader(ctx, "scheduler")
		require.NoError(t, err)
		require.Equal(t, "http://a:9090", info.Value)

		require.NoError(t, la.Resign(ctx))
		require.ErrorIs(t, la.Err(), ErrReleased)
		require.NoError(t, la.Resign(ctx), "Resign is idempotent")
		lc := <-elected
		require.NotNil(t, lc)
		require.Greater(t, lc.Term(), la.Term(), "terms strictly increase")
		info, err = a.Leader(ctx, "scheduler")
		require.NoError(t, err)
		require.Equal(t, "sched-c", info.Owner)
		require.Equal(t, lc.Term(), info.Term)
		require.NoError(t, lc.Resign(ctx))
		_, err = a.Leader(ctx, "scheduler")
		require.ErrorIs(t, err, ErrNoLeader)
	})
}

// The deposed leader knows first: a leader that cannot renew has Done
// closed (ErrLost) before the next campaigner is elected, and its Fence
// then fails.
func TestElectionDeposedLeaderKnowsFirst(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, f := b.faulty(t, Config{Owner: "old"})
		c := b.client(t, Config{Owner: "new"})
		la, err := a.Campaign(ctx, "scheduler", "")
		require.NoError(t, err)
		f.failRenew.Store(true)
		lc, err := c.Campaign(ctx, "scheduler", "")
		require.NoError(t, err)
		select {
		case <-la.Done():
		default:
			t.Fatal("a new leader was elected before the old one learned it lost")
		}
		require.ErrorIs(t, la.Err(), ErrLost)
		require.Greater(t, lc.Term(), la.Term())

		tx, err := b.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer tx.Rollback()
		require.ErrorIs(t, la.Fence(ctx, tx), ErrLost, "a deposed leader's fence fails")
	})
}

// Lead runs fn only while elected, cancels its ctx when the leadership is
// lost, campaigns again, and returns fn's error when fn fails as leader.
func TestLead(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, f := b.faulty(t, Config{Owner: "a"})
		var running, calls atomic.Int64
		terms := make(chan int64, 10)
		ended := make(chan error, 10) // each term's ctx cause
		boom := errors.New("boom")
		done := make(chan error, 1)
		go func() {
			done <- a.Lead(ctx, "cron", "a", func(ctx context.Context, term int64) error {
				if running.Add(1) != 1 {
					t.Error("fn runs twice at once")
				}
				defer running.Add(-1)
				terms <- term
				if calls.Add(1) == 3 {
					return boom // the third term fails as leader
				}
				<-ctx.Done()
				ended <- context.Cause(ctx)
				return ctx.Err()
			})
		}()
		first := <-terms
		// Lose the first term: renewals fail until the lease is lost.
		f.failRenew.Store(true)
		require.ErrorIs(t, <-ended, ErrLost, "fn's ctx ends when the leadership is lost")
		f.failRenew.Store(false)
		second := <-terms
		require.Greater(t, second, first)
		// An operator breaks the leader's lease: the second term is lost too.
		_, err := a.admin().Break(ctx, ElectionPrefix+"cron", "")
		require.NoError(t, err)
		require.ErrorIs(t, <-ended, ErrLost)
		third := <-terms
		require.Greater(t, third, second)
		require.ErrorIs(t, <-done, boom)
		_, err = a.Leader(ctx, "cron")
		require.ErrorIs(t, err, ErrNoLeader, "Lead resigns when fn fails as leader")
	})
}

// ObserveLeader reports the current leader, every change, and "no leader"
// once a crashed leader's lease has expired.
func TestObserveLeader(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		// No reaper: a dead leader's hold stays until someone takes over.
		obs := b.client(t, Config{Owner: "observer", WatchInterval: 50 * time.Millisecond, ReapInterval: ReapDisabled})
		ch, err := obs.ObserveLeader(ctx, "scheduler")
		require.NoError(t, err)
		next := func() LeaderInfo {
			t.Helper()
			select {
			case li, ok := <-ch:
				require.True(t, ok, "observer closed")
				return li
			case <-ctx.Done():
				t.Fatal("no report")
			}
			return LeaderInfo{}
		}
		require.Equal(t, LeaderInfo{}, next(), "no leader at first")
		a, f := b.faulty(t, Config{Owner: "a", ReapInterval: ReapDisabled})
		la, err := a.Campaign(ctx, "scheduler", "v1")
		require.NoError(t, err)
		li := next()
		require.Equal(t, "a", li.Owner)
		require.Equal(t, la.Term(), li.Term)
		require.NoError(t, la.Proclaim(ctx, "v2"))
		require.Equal(t, "v2", next().Value)
		// The leader stops renewing (as if it crashed): once its lease has
		// expired by the database's clock, the observer reports no leader.
		f.failDelete.Store(true) // nor does it delete its lease row
		f.failRenew.Store(true)
		require.Equal(t, LeaderInfo{}, next(), "a dead leader is reported as no leader")
		require.ErrorIs(t, la.Err(), ErrLost)
	})
}

func TestElectionInvalidNames(t *testing.T) {
	t.Parallel()
	b := &lockBundle{kind: "sqlite", db: testdb.OpenMigrated(t, "sqlite")}
	c := b.client(t, Config{})
	ctx := testCtx(t)
	_, err := c.Campaign(ctx, "", "")
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = c.Campaign(ctx, strings.Repeat("x", 250), "")
	require.ErrorIs(t, err, ErrInvalidName)
	require.Contains(t, err.Error(), "lock name")
	_, err = c.Campaign(ctx, "ok", strings.Repeat("v", PayloadMaxBytes+1))
	require.ErrorIs(t, err, ErrInvalidPayload)
	_, err = c.Leader(ctx, "")
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = c.ObserveLeader(ctx, "a\x00b")
	require.ErrorIs(t, err, ErrInvalidName)
}
