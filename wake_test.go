package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// countingDialect counts Acquire calls per lease. With notifier set it is a
// dialect.Notifier too (the wrapped dialect's); otherwise its Clients poll.
type countingDialect struct {
	dialect.Dialect
	mu       sync.Mutex
	acquires map[int64]int
	total    atomic.Int64
	granted  atomic.Int64 // acquires answered Granted
	spent    atomic.Int64 // nanoseconds the acquires took, all together
}

func (d *countingDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	d.mu.Lock()
	d.acquires[p.LeaseID]++
	d.mu.Unlock()
	d.total.Add(1)
	start := time.Now()
	res, err := d.Dialect.Acquire(ctx, db, p)
	d.spent.Add(int64(time.Since(start)))
	if err == nil && res.Status == dialect.Granted {
		d.granted.Add(1)
	}
	return res, err
}

func (d *countingDialect) count(lease int64) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.acquires[lease]
}

type notifyingCountingDialect struct {
	*countingDialect
	dialect.Notifier
}

// countingPostgres opens a migrated PostgreSQL database and returns it with
// a counting dialect, and that dialect as a Notifier (for listening Clients).
func countingPostgres(t *testing.T) (*lockBundle, *countingDialect, dialect.Dialect) {
	db := testdb.OpenMigrated(t, testdb.Postgres)
	n, ok := db.Dialect.(dialect.Notifier)
	require.True(t, ok)
	counting := &countingDialect{Dialect: db.Dialect, acquires: map[int64]int{}}
	return &lockBundle{db: db, kind: testdb.Postgres}, counting, notifyingCountingDialect{counting, n}
}

// waitersOf returns how many requests wait for name.
func waitersOf(ctx context.Context, t *testing.T, c *Client, name string) int {
	t.Helper()
	locks, err := c.Locks(ctx, Filter{Prefix: name})
	require.NoError(t, err)
	for _, l := range locks {
		if l.Name == name {
			return len(l.Waiters)
		}
	}
	return 0
}

// On PostgreSQL a release wakes only the waiter at the head of the queue,
// not every waiter of the name: a chain of handovers through waiters in
// separate Clients costs about one acquire attempt per grant, where waking
// the whole herd costs one per waiter still queued (here 8+7+...+1 = 36
// for 8 grants).
func TestReleaseWakesOnlyTheHeadWaiter(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b, counting, notifying := countingPostgres(t)
	holder := b.client(t, Config{TTL: 10 * time.Second})
	const k = 8
	clients := make([]*Client, k)
	for i := range clients {
		clients[i] = b.client(t, Config{TTL: 10 * time.Second, Dialect: notifying})
	}
	for _, c := range clients {
		require.Eventually(t, c.notified, 10*time.Second, time.Millisecond, "the client listens")
	}
	first, err := holder.Lock(ctx, "hot", Exclusive)
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make(chan error, k)
	for i, c := range clients {
		// Queue them one by one, so that each Client's request has its
		// place (and its lease exists before the counting starts).
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := c.Lock(ctx, "hot", Exclusive)
			if err == nil {
				err = l.Release(ctx)
			}
			errs <- err
		}()
		require.Eventually(t, func() bool { return waitersOf(ctx, t, holder, "hot") == i+1 }, 10*time.Second, time.Millisecond)
	}
	// Let the waiters' polls back off to the long interval of a notified
	// Client (about every 1-2s): no acquire attempt for a while.
	require.Eventually(t, func() bool {
		before := counting.total.Load()
		time.Sleep(300 * time.Millisecond)
		return counting.total.Load() == before
	}, 20*time.Second, time.Millisecond)

	before := counting.total.Load()
	require.NoError(t, first.Release(ctx))
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	attempts := counting.total.Load() - before
	t.Logf("%d acquire attempts for %d grants", attempts, k)
	require.LessOrEqual(t, attempts, int64(2*k), "a release wakes the head of the queue, not every waiter")
}

// On PostgreSQL a release hands the name over to the head of the queue,
// and the notification carries the grant: the waiter's Lock returns the
// hold without another acquire statement, with the token the database
// recorded for the name.
func TestHandoverNotificationCarriesTheGrant(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	b, counting, notifying := countingPostgres(t)
	holder := b.client(t, Config{TTL: 10 * time.Second})
	waiter := b.client(t, Config{TTL: 10 * time.Second, Dialect: notifying})
	require.Eventually(t, waiter.notified, 10*time.Second, time.Millisecond, "the client listens")
	first, err := holder.Lock(ctx, "h", Exclusive)
	require.NoError(t, err)

	got := make(chan *Lock, 1)
	go func() {
		l, err := waiter.Lock(ctx, "h", Exclusive, WithPayload("next"))
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	require.Eventually(t, func() bool { return waitersOf(ctx, t, holder, "h") == 1 }, 10*time.Second, time.Millisecond)
	// Let the waiter's polls back off (a notified waiter at the head polls
	// about every 1-2 s): two quiet spells in a row.
	quiet := 0
	require.Eventually(t, func() bool {
		before := counting.total.Load()
		time.Sleep(300 * time.Millisecond)
		if counting.total.Load() == before {
			quiet++
		} else {
			quiet = 0
		}
		return quiet == 2
	}, 20*time.Second, time.Millisecond)

	// No acquire statement learns of the grant (a poll that happens to
	// come while the name is still held is answered Blocked, and is not
	// the grant's).
	before := counting.granted.Load()
	require.NoError(t, first.Release(ctx))
	l := <-got
	require.NotNil(t, l)
	require.Zero(t, counting.granted.Load()-before, "the grant came with the notification")
	require.Greater(t, l.Token(), first.Token())
	locks, err := holder.Locks(ctx, Filter{Prefix: "h"})
	require.NoError(t, err)
	require.Len(t, locks, 1)
	require.Len(t, locks[0].Holders, 1)
	require.Equal(t, l.Token(), locks[0].Holders[0].Token, "the token is the database's")
	require.Equal(t, "next", locks[0].Holders[0].Payload, "granted with the waiter's payload")
	require.NoError(t, l.Release(ctx))
}

// Where waiters poll (no notifications: MySQL, SQLite, PostgreSQL with its
// listener down), the waiter at the head of the queue polls every few
// milliseconds while one further back polls less often, so that a handover
// takes milliseconds without every waiter polling that fast.
func TestPollingByQueuePosition(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		counting := &countingDialect{Dialect: b.db.Dialect, acquires: map[int64]int{}}
		holder := b.client(t, Config{TTL: 10 * time.Second})
		l, err := holder.Lock(ctx, "hot", Exclusive)
		require.NoError(t, err)
		const k = 7
		clients := make([]*Client, k)
		leases := make([]int64, k)
		wctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for i := range clients {
			clients[i] = b.client(t, Config{TTL: 10 * time.Second, Dialect: counting})
			ls, err := clients[i].currentLease(ctx)
			require.NoError(t, err)
			leases[i] = ls.id
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := clients[i].Lock(wctx, "hot", Exclusive)
				if !errors.Is(err, context.Canceled) {
					t.Errorf("waiter %d: %v, want context.Canceled", i, err)
				}
			}()
			require.Eventually(t, func() bool { return waitersOf(ctx, t, holder, "hot") == i+1 }, 10*time.Second, time.Millisecond)
		}
		// Count each waiter's polls over the same second, once they have
		// backed off to their cadence. Polls are also spaced by a multiple
		// of what an attempt costs, so on a machine loaded by the rest of
		// the suite (-race, SQLite's single writer) every waiter can be
		// held to the same slow pace for a while: up to five seconds are
		// measured, and one that shows the head's cadence is enough. Were
		// the head not polling faster, none would.
		time.Sleep(300 * time.Millisecond)
		polls := make([]int, k)
		var cost time.Duration // the mean attempt's, in the last window
		for range 5 {
			start := make([]int, k)
			for i := range leases {
				start[i] = counting.count(leases[i])
			}
			n0, spent0 := counting.total.Load(), counting.spent.Load()
			time.Sleep(time.Second)
			for i := range leases {
				polls[i] = counting.count(leases[i]) - start[i]
			}
			if n := counting.total.Load() - n0; n > 0 {
				cost = time.Duration((counting.spent.Load() - spent0) / n)
			}
			t.Logf("polls in 1s by queue position: %v (an attempt took %v on average)", polls, cost)
			if polls[0] > 2*polls[k-1] {
				break
			}
		}
		cancel()
		wg.Wait()
		require.NoError(t, l.Release(ctx))
		if polls[0] <= 2*polls[k-1] && pollCostFactor*cost > pollMax/4 {
			// Attempts this slow space the head's polls by a multiple of
			// their cost (TestPollSpacedByAttemptCost) that is within a
			// factor of about 2 of pollMax, the last waiter's cap (with
			// jitter, the head then polls every 3 costs on average, the
			// last waiter every 150ms): the places cannot be told apart
			// reliably on this machine now (TestPollLimitByQueuePosition
			// checks the caps themselves).
			t.Skipf("attempts took %v on average: every waiter is held to about %v between polls", cost, pollCostFactor*cost)
		}
		require.Greater(t, polls[0], 2*polls[k-1], "the head polls much more often than the last waiter")
	})
}

// The cap of a waiter's poll interval by its place in the queue.
func TestPollLimitByQueuePosition(t *testing.T) {
	c := &Client{}
	b := newBackoff(c)
	require.Equal(t, pollHeadMax, b.limit(0))
	require.Equal(t, 2*pollHeadMax, b.limit(1))
	require.Equal(t, 4*pollHeadMax, b.limit(2))
	require.Equal(t, pollMax, b.limit(20))
	require.Equal(t, pollMax, b.limit(-1), "unknown place")
	c.listener.Store(true)
	require.Equal(t, pollMaxNotified, b.limit(0), "notified: polls only cover missed notifications")
}

// A polling waiter spaces its attempts by a multiple of what the last one
// took, so that on a slow database the head's polls do not crowd out
// releases and renewals.
func TestPollSpacedByAttemptCost(t *testing.T) {
	c := &Client{closed: make(chan struct{})}
	b := newBackoff(c)
	b.cost = 10 * time.Millisecond
	wake := make(chan wakeup)
	start := time.Now()
	_, err := b.sleep(context.Background(), wake, 0, 0)
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), pollCostFactor*b.cost/2, "at least half the spacing (jitter)")
}

// A pending wake-up that carries a grant is never replaced by a plain one,
// and a plain one gives way to a grant: the waiter learns of its grant
// however the wake-ups interleave.
func TestWakeupKeepsTheGrant(t *testing.T) {
	w := newWaiters()
	ch, stop := w.register("n", 7)
	defer stop()
	w.wake("n")
	w.wakeRequest("n", 7, wakeup{lease: 1, token: 42})
	w.wake("n")
	w.wakeRequest("n", 8, wakeup{lease: 1, token: 43}) // another request
	require.Equal(t, wakeup{lease: 1, token: 42}, <-ch)
	select {
	case v := <-ch:
		t.Fatalf("one wake-up pending at most, got a second: %+v", v)
	default:
	}
}

// A polling waiter paces its polls by how fast its place moves up: half the
// time the queue would take to bring it to the head at that pace.
func TestPollPacedByQueueMovement(t *testing.T) {
	b := newBackoff(&Client{})
	t0 := time.Now()
	b.pace(10, t0)
	require.Equal(t, pollMin, b.next, "no pace known yet: the doubling from pollMin")
	b.pace(10, t0.Add(50*time.Millisecond))
	require.Equal(t, pollMin, b.next, "not moved: still unknown")
	b.pace(8, t0.Add(20*time.Millisecond))
	require.Equal(t, 40*time.Millisecond, b.next, "10ms a place, 8 places: half of 80ms")
	b.pace(2, t0.Add(80*time.Millisecond))
	require.Equal(t, 10*time.Millisecond, b.next, "10ms a place, 2 places")
	b.pace(1, t0.Add(80*time.Millisecond+100*time.Microsecond))
	require.Equal(t, pollMin, b.next, "never below pollMin")
	b.pace(5, t0.Add(time.Second))
	b.pace(4, t0.Add(time.Second+30*time.Millisecond))
	require.Equal(t, 60*time.Millisecond, b.next, "moved back: measured afresh from there")
}
