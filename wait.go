package sqldlm

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// waiters lets a release in this process, or a notification from the
// database, wake the goroutines waiting for a name at once: the one request
// a notification names, the longest-waiting one of the name, or all of them.
type waiters struct {
	mu     sync.Mutex
	byName map[string][]*waiter // per name, in order of registration
}

// waiter is one request waiting for a name.
type waiter struct {
	id int64 // the request's id
	ch chan struct{}
}

func newWaiters() *waiters { return &waiters{byName: map[string][]*waiter{}} }

// register returns a channel that receives a value when request id may be
// granted name, and a function to stop listening.
func (w *waiters) register(name string, id int64) (<-chan struct{}, func()) {
	me := &waiter{id: id, ch: make(chan struct{}, 1)}
	w.mu.Lock()
	w.byName[name] = append(w.byName[name], me)
	w.mu.Unlock()
	return me.ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		list := w.byName[name]
		for i, x := range list {
			if x == me {
				list = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(w.byName, name)
		} else {
			w.byName[name] = list
		}
	}
}

func (x *waiter) wake() {
	select {
	case x.ch <- struct{}{}:
	default:
	}
}

// wake wakes every waiter of name; it never blocks.
func (w *waiters) wake(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, x := range w.byName[name] {
		x.wake()
	}
}

// wakeHead wakes the waiter of name that registered first (in this
// process, the one most likely at the head of the name's queue), after a
// release: waking the others would only have them asked again to wait.
func (w *waiters) wakeHead(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if list := w.byName[name]; len(list) > 0 {
		list[0].wake()
	}
}

// wakeRequest wakes the waiter of name with request id, if it waits in
// this process.
func (w *waiters) wakeRequest(name string, id int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, x := range w.byName[name] {
		if x.id == id {
			x.wake()
		}
	}
}

// wakeAll wakes every waiter (when notifications may have been missed).
func (w *waiters) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, list := range w.byName {
		for _, x := range list {
			x.wake()
		}
	}
}

// Polling bounds. Waiters poll with capped exponential backoff and jitter.
// Where the database notifies releases (PostgreSQL, while its listening
// connection is up) the cap is long, since the waiter at the head of the
// queue is notified and polls only cover missed notifications; a waiter
// that is not at the head sleeps the long interval at once (its place
// moves up only by grants, releases and withdrawals, which notify). Otherwise
// the cap depends on the waiter's place in the queue: the head (no waiter
// ahead) polls every few milliseconds, since it is the one a release lets
// in, and every place further back doubles the cap, up to pollMax; a
// waiter further back is let in only after those ahead, and it moves up as
// they are granted.
const (
	pollMin         = 2 * time.Millisecond
	pollHeadMax     = 4 * time.Millisecond
	pollMax         = 200 * time.Millisecond
	pollMaxNotified = 2 * time.Second
)

// pollCostFactor spaces a polling waiter's attempts by at least this many
// times what its last attempt took: on a busy database (or one with a
// single writer, SQLite) the polls of the head of a queue cannot crowd out
// the statements that matter, releases and lease renewals.
const pollCostFactor = 4

type backoff struct {
	c    *Client
	next time.Duration
	cost time.Duration // how long the last acquire attempt took
}

func newBackoff(c *Client) *backoff { return &backoff{c: c, next: pollMin} }

// limit is the longest sleep of a waiter with ahead waiters before it in
// the queue (negative: unknown).
func (b *backoff) limit(ahead int) time.Duration {
	switch {
	case b.c.notified():
		return pollMaxNotified
	case ahead < 0:
		return pollMax
	}
	return min(pollHeadMax<<min(ahead, 16), pollMax)
}

// sleep waits for a wake-up, the next poll, or expiry (when positive: the
// time at which the blocking holder's lease would expire), whichever comes
// first. ahead is the number of waiters queued before this one (negative
// when unknown). It returns ctx's error if ctx ends, ErrClosed if the
// client closes.
func (b *backoff) sleep(ctx context.Context, wake <-chan struct{}, expiry time.Duration, ahead int) error {
	limit := b.limit(ahead)
	if ahead > 0 && b.c.notified() {
		// Notified, and not at the head: the notification comes when the
		// request reaches the head, so there is nothing to poll for soon.
		b.next = limit
	}
	d := min(b.next, limit)
	b.next = min(b.next*2, max(limit, pollMax))
	if !b.c.notified() {
		d = max(d, min(pollCostFactor*b.cost, pollMax))
	}
	d = d/2 + rand.N(d/2+1) // jitter: [d/2, d]
	if expiry > 0 && expiry < d {
		d = expiry
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-b.c.closed:
		return ErrClosed
	case <-wake:
		b.next = pollMin
	case <-t.C:
	}
	return nil
}
