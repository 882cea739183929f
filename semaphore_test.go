package sqldlm

import (
	"context"
	"database/sql"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Never more than limit permit holders under many goroutines of several
// clients, and every slot's tokens strictly increase.
func TestSemaphoreLimit(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		const limit = 2
		var inside, most, grants atomic.Int64
		var mu sync.Mutex
		last := map[int]int64{} // slot -> last token
		var wg sync.WaitGroup
		for range 3 {
			// A longer TTL than the other tests': this one keeps the
			// database busy, and a lease lost under load would be a
			// failure of the test, not of the semaphore.
			c := b.client(t, Config{TTL: 5 * time.Second})
			s := c.Semaphore("workers", limit)
			for range 2 {
				wg.Go(func() {
					for range 3 {
						p, err := s.Acquire(ctx)
						if err != nil {
							t.Errorf("acquire: %v", err)
							return
						}
						n := inside.Add(1)
						for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
						}
						if n > limit {
							t.Errorf("%d permit holders at once, limit %d", n, limit)
						}
						mu.Lock()
						if p.Token() <= last[p.Slot()] {
							t.Errorf("slot %d: token %d after %d", p.Slot(), p.Token(), last[p.Slot()])
						}
						last[p.Slot()] = p.Token()
						mu.Unlock()
						if p.Slot() >= limit {
							t.Errorf("slot %d, limit %d", p.Slot(), limit)
						}
						// Stay a while (less once another holder is seen
						// beyond the limit), so that acquirers find the
						// semaphore full.
						for dwell := time.Now(); inside.Load() <= limit && time.Since(dwell) < 200*time.Millisecond; {
							time.Sleep(time.Millisecond)
						}
						inside.Add(-1)
						grants.Add(1)
						if err := p.Release(ctx); err != nil {
							t.Errorf("release: %v", err)
						}
					}
				})
			}
		}
		wg.Wait()
		require.EqualValues(t, 18, grants.Load())
		t.Logf("at most %d holders at once", most.Load())
	})
}

// FIFO: an acquirer that waits first gets the next free permit, although a
// stream of later acquirers, woken at once by every release in their own
// process, keeps asking.
func TestSemaphoreFIFO(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		var ah, wh acquireCounter
		a := b.client(t, Config{Owner: "a", Hooks: &ah})
		w := b.client(t, Config{Owner: "w", Hooks: &wh})
		sa, sw := a.Semaphore("slots", 1), w.Semaphore("slots", 1)
		held, err := sa.Acquire(ctx)
		require.NoError(t, err)

		var seq atomic.Int64 // grants after held's release, in order
		waiterGot := make(chan int64, 1)
		go func() {
			p, err := sw.Acquire(ctx)
			if err != nil {
				t.Errorf("waiter: %v", err)
				close(waiterGot)
				return
			}
			waiterGot <- seq.Add(1)
			p.Release(ctx)
		}()
		// The waiter has begun to wait once one of its lock requests was
		// granted (the semaphore's queue) and the permit is still held.
		require.Eventually(t, func() bool { return wh.granted.Load() > 0 }, 10*time.Second, 5*time.Millisecond)

		stop := make(chan struct{})
		var wg sync.WaitGroup
		var later atomic.Int64
		started := ah.started.Load()
		for range 3 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					p, err := sa.Acquire(ctx)
					if err != nil {
						t.Errorf("later acquirer: %v", err)
						return
					}
					seq.Add(1)
					later.Add(1)
					p.Release(ctx)
				}
			})
		}
		require.Eventually(t, func() bool { return ah.started.Load() >= started+3 }, 10*time.Second, 5*time.Millisecond,
			"the later acquirers ask")
		require.NoError(t, held.Release(ctx))
		got := <-waiterGot
		close(stop)
		wg.Wait()
		require.EqualValues(t, 1, got, "the first waiter got the next permit (%d later grants)", later.Load())
	})
}

// acquireCounter counts a client's lock requests and grants.
type acquireCounter struct {
	NopHooks
	started, granted atomic.Int64
}

func (h *acquireCounter) AcquireStarted(string, Mode)                { h.started.Add(1) }
func (h *acquireCounter) AcquireGranted(string, Mode, time.Duration) { h.granted.Add(1) }

// TryAcquire refuses when every permit is held, saying by whom; Acquire
// with a deadline reports who was in the way; a released permit is
// acquired again.
func TestSemaphoreTryAcquire(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, c := b.client(t, Config{Owner: "a"}), b.client(t, Config{Owner: "c"})
		sa, sc := a.Semaphore("pool", 2), c.Semaphore("pool", 2)
		p1, err := sa.TryAcquire(ctx)
		require.NoError(t, err)
		p2, err := sa.TryAcquire(ctx)
		require.NoError(t, err)
		require.NotEqual(t, p1.Slot(), p2.Slot())

		_, err = sc.TryAcquire(ctx)
		require.ErrorIs(t, err, ErrLocked)
		var le *LockedError
		require.ErrorAs(t, err, &le)
		require.Equal(t, "a", le.Owner)
		require.Equal(t, SemaphorePrefix+"pool", le.Name)

		short, cancel := context.WithTimeout(ctx, time.Second)
		_, err = sc.Acquire(short)
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorIs(t, err, ErrLocked)
		require.ErrorAs(t, err, &le)
		require.Equal(t, "a", le.Owner)

		require.NoError(t, p1.Release(ctx))
		require.NoError(t, p1.Release(ctx), "Release is idempotent")
		require.ErrorIs(t, p1.Err(), ErrReleased)
		p3, err := sc.TryAcquire(ctx)
		require.NoError(t, err)
		require.Equal(t, p1.Slot(), p3.Slot())
		require.Greater(t, p3.Token(), p1.Token())
		_, err = sa.TryAcquire(ctx)
		require.ErrorIs(t, err, ErrLocked)
		require.NoError(t, p2.Release(ctx))
		require.NoError(t, p3.Release(ctx))
	})
}

// TryAcquire waits for an acquirer that holds the queue while a permit is
// free (it is taking one, and goes first), but refuses at once when other
// acquirers are queued.
func TestSemaphoreTryAcquireQueue(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		var ch acquireCounter
		x, y := b.client(t, Config{Owner: "x"}), b.client(t, Config{Owner: "y"})
		c := b.client(t, Config{Owner: "c", Hooks: &ch})
		s := c.Semaphore("q", 2)
		// x holds the queue as an acquirer does while it picks a slot.
		picking, err := x.Lock(ctx, SemaphorePrefix+"q", Exclusive)
		require.NoError(t, err)
		got := make(chan error, 1)
		go func() {
			p, err := s.TryAcquire(ctx)
			if err == nil {
				err = p.Release(ctx)
			}
			got <- err
		}()
		// The queue was asked for twice: at once, then waiting.
		require.Eventually(t, func() bool { return ch.started.Load() >= 2 }, 10*time.Second, 5*time.Millisecond)
		require.NoError(t, picking.Release(ctx))
		require.NoError(t, <-got, "TryAcquire waited for the acquirer picking a slot")

		// With another acquirer queued, TryAcquire refuses at once.
		picking, err = x.Lock(ctx, SemaphorePrefix+"q", Exclusive)
		require.NoError(t, err)
		queued := make(chan error, 1)
		go func() {
			l, err := y.Lock(ctx, SemaphorePrefix+"q", Exclusive)
			if err == nil {
				err = l.Release(ctx)
			}
			queued <- err
		}()
		require.Eventually(t, func() bool {
			infos, err := c.Locks(ctx, Filter{Prefix: SemaphorePrefix + "q"})
			require.NoError(t, err)
			return len(infos) > 0 && len(infos[0].Waiters) == 1
		}, 10*time.Second, 5*time.Millisecond)
		before := ch.started.Load()
		_, err = s.TryAcquire(ctx)
		require.ErrorIs(t, err, ErrLocked)
		require.Equal(t, before+1, ch.started.Load(), "TryAcquire asked for the queue once, and did not wait in it")
		var le *LockedError
		require.ErrorAs(t, err, &le)
		require.Equal(t, LockedError{Name: SemaphorePrefix + "q", WaitersAhead: 2}, *le, "two acquirers go first")
		require.NoError(t, picking.Release(ctx))
		require.NoError(t, <-queued)
	})
}

// A slot counts only if it was granted while its acquirer held the queue:
// an acquirer whose lease ends between its read of the slots and its grant
// (here broken by an operator; a pause does the same) gives the slot back
// and queues again, behind the acquirer that was queued first.
func TestSemaphoreSlotUnderQueue(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		var ah acquireCounter
		bd := &breakingDialect{Dialect: b.db.Dialect, admin: b.admin(t)}
		a := b.client(t, Config{Owner: "a", Dialect: bd, Hooks: &ah})
		z, h := b.client(t, Config{Owner: "z"}), b.client(t, Config{Owner: "h"})
		const queue = SemaphorePrefix + "u"
		held, err := h.Semaphore("u", 1).Acquire(ctx)
		require.NoError(t, err)
		// a waits at the head (holding the queue), z behind it.
		gotA, gotZ := make(chan *Permit, 1), make(chan *Permit, 1)
		acquire := func(c *Client, got chan *Permit) {
			p, err := c.Semaphore("u", 1).Acquire(ctx)
			if err != nil {
				t.Errorf("%s: %v", c.Owner(), err)
			}
			got <- p
		}
		go acquire(a, gotA)
		require.Eventually(t, func() bool { return ah.granted.Load() > 0 }, 10*time.Second, 5*time.Millisecond)
		go acquire(z, gotZ)
		require.Eventually(t, func() bool {
			infos, err := h.Locks(ctx, Filter{Prefix: queue})
			require.NoError(t, err)
			return len(infos) > 0 && infos[0].Name == queue && len(infos[0].Waiters) == 1
		}, 10*time.Second, 5*time.Millisecond)
		// a's lease is broken as a asks for the freed slot.
		bd.breakOn.Store(queue + "#0")
		require.NoError(t, held.Release(ctx))
		var first *Permit
		select {
		case first = <-gotZ:
		case pa := <-gotA:
			t.Fatalf("a got a permit (slot %d) without holding the queue, before z, which was queued first", pa.Slot())
		}
		require.NotNil(t, first)
		require.Equal(t, int32(1), bd.broke.Load(), "a's lease was broken once")
		require.NoError(t, first.Release(ctx))
		pa := <-gotA
		require.NotNil(t, pa)
		require.NoError(t, pa.Release(ctx))
	})
}

// breakingDialect breaks its client's lease (as an operator would) when
// the client first asks for the name in breakOn.
type breakingDialect struct {
	dialect.Dialect
	admin   *Admin
	breakOn atomic.Value // string
	broke   atomic.Int32
}

func (d *breakingDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	if name, _ := d.breakOn.Load().(string); name != "" && name == p.Name && d.broke.CompareAndSwap(0, 1) {
		if _, err := d.admin.Break(ctx, strings.TrimSuffix(name, "#0"), ""); err != nil {
			return nil, err
		}
	}
	return d.Dialect.Acquire(ctx, db, p)
}

// A limit that differs from the one in force is refused, at once and not
// after a wait, until no live lease holds a permit of the old limit: a
// crashed holder's permit stops counting when its lease expires.
func TestSemaphoreLimitMismatch(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, f := b.faulty(t, Config{Owner: "a", ReapInterval: ReapDisabled})
		c := b.client(t, Config{Owner: "c", ReapInterval: ReapDisabled})
		p, err := a.Semaphore("ipmi", 2).Acquire(ctx)
		require.NoError(t, err)
		_, err = c.Semaphore("ipmi", 3).Acquire(ctx)
		require.ErrorIs(t, err, ErrLimitMismatch)
		require.Contains(t, err.Error(), "limit=2")
		_, err = c.Semaphore("ipmi", 1).TryAcquire(ctx)
		require.ErrorIs(t, err, ErrLimitMismatch)
		q, err := c.Semaphore("ipmi", 2).Acquire(ctx)
		require.NoError(t, err, "the same limit is accepted")
		require.NoError(t, q.Release(ctx))

		// The holder crashes: its permit counts until its lease expires.
		f.failDelete.Store(true)
		f.failRenew.Store(true)
		<-p.Done()
		require.ErrorIs(t, p.Err(), ErrLost)
		require.Eventually(t, func() bool {
			infos, err := c.Locks(ctx, Filter{Prefix: SemaphorePrefix + "ipmi#"})
			require.NoError(t, err)
			return len(infos) == 1 && len(infos[0].Holders) == 1 && !infos[0].Holders[0].Live
		}, 10*time.Second, 10*time.Millisecond, "the dead holder's permit is still there")
		p3, err := c.Semaphore("ipmi", 3).Acquire(ctx)
		require.NoError(t, err, "a dead lease's permit does not keep the old limit in force")
		require.NoError(t, p3.Release(ctx))
	})
}

// A crashed permit holder's permit is taken over once its lease has
// expired; the holder knows first, and its Fence fails.
func TestSemaphoreCrashedHolder(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		a, f := b.faulty(t, Config{Owner: "a", ReapInterval: ReapDisabled})
		c := b.client(t, Config{Owner: "c", ReapInterval: ReapDisabled})
		pa, err := a.Semaphore("one", 1).Acquire(ctx)
		require.NoError(t, err)
		f.failDelete.Store(true)
		f.failRenew.Store(true)
		pc, err := c.Semaphore("one", 1).Acquire(ctx)
		require.NoError(t, err)
		select {
		case <-pa.Done():
		default:
			t.Fatal("the permit was taken over before its holder learned it lost it")
		}
		require.ErrorIs(t, pa.Err(), ErrLost)
		require.Greater(t, pc.Token(), pa.Token())

		tx, err := b.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.ErrorIs(t, pa.Fence(ctx, tx), ErrLost, "a lost permit's fence fails")
		require.NoError(t, tx.Rollback())
		require.ErrorIs(t, pa.Release(ctx), ErrLost)
		require.ErrorIs(t, pa.Release(ctx), ErrLost, "Release is idempotent")

		tx, err = b.db.BeginTx(ctx, nil)
		require.NoError(t, err)
		require.NoError(t, pc.Fence(ctx, tx))
		require.NoError(t, tx.Commit())
		require.NoError(t, pc.Release(ctx))
	})
}

// An acquirer that crashes while first in line (holding the queue) holds
// the next one up only until its lease expires.
func TestSemaphoreCrashedFirstInLine(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		var ah acquireCounter
		a, f := b.faulty(t, Config{Owner: "a", Hooks: &ah, ReapInterval: ReapDisabled})
		h := b.client(t, Config{Owner: "h", ReapInterval: ReapDisabled})
		z := b.client(t, Config{Owner: "z", ReapInterval: ReapDisabled})
		held, err := h.Semaphore("line", 1).Acquire(ctx)
		require.NoError(t, err)
		aDone := make(chan error, 1)
		go func() {
			_, err := a.Semaphore("line", 1).Acquire(ctx)
			aDone <- err
		}()
		require.Eventually(t, func() bool { return ah.granted.Load() > 0 }, 10*time.Second, 5*time.Millisecond,
			"a is first in line")
		// a crashes: nothing it sends reaches the database any more.
		f.failAcquire.Store(true)
		f.failDelete.Store(true)
		f.failRenew.Store(true)
		require.NoError(t, held.Release(ctx))
		pz, err := z.Semaphore("line", 1).Acquire(ctx)
		require.NoError(t, err, "z gets the permit once a's lease has expired")
		require.NoError(t, pz.Release(ctx))
		a.Close()
		require.ErrorIs(t, <-aDone, ErrClosed, "a never got a permit")
	})
}

func TestSemaphoreInvalid(t *testing.T) {
	t.Parallel()
	b := &lockBundle{kind: "sqlite", db: testdb.OpenMigrated(t, "sqlite")}
	c := b.client(t, Config{})
	ctx := testCtx(t)
	_, err := c.Semaphore("", 1).Acquire(ctx)
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = c.Semaphore("a\x00b", 1).TryAcquire(ctx)
	require.ErrorIs(t, err, ErrInvalidName)
	for _, limit := range []int{0, -1, SemaphoreMaxLimit + 1} {
		_, err = c.Semaphore("ok", limit).Acquire(ctx)
		require.ErrorContains(t, err, "invalid limit")
	}
	// The longest slot name must fit: 17 + 233 + "#1023" = 255 bytes.
	p, err := c.Semaphore(strings.Repeat("x", 233), SemaphoreMaxLimit).TryAcquire(ctx)
	require.NoError(t, err)
	require.NoError(t, p.Release(ctx))
	_, err = c.Semaphore(strings.Repeat("x", 234), SemaphoreMaxLimit).TryAcquire(ctx)
	require.ErrorIs(t, err, ErrInvalidName)
	require.ErrorContains(t, err, "#1023")
}
