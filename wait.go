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
// A notification may also carry a grant (a handover), which the request
// then takes without asking the database again.
type waiters struct {
	mu     sync.Mutex
	byName map[string][]*waiter // per name, in order of registration
}

// waiter is one request waiting for a name.
type waiter struct {
	id int64 // the request's id
	ch chan wakeup
}

// wakeup is what a waiter is woken with: nothing (try again), or a grant
// made on its behalf, committed, under lease with token.
type wakeup struct {
	lease int64
	token int64
}

// grants reports whether v carries a grant made under lease l. (A grant
// under an earlier lease of the same request is void with that lease.)
func (v wakeup) grants(l *lease) bool { return v.token != 0 && v.lease == l.id }

func newWaiters() *waiters { return &waiters{byName: map[string][]*waiter{}} }

// register returns a channel that receives a value when request id may be
// granted name, and a function to stop listening.
func (w *waiters) register(name string, id int64) (<-chan wakeup, func()) {
	me := &waiter{id: id, ch: make(chan wakeup, 1)}
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

// wake hands v to the waiter without blocking. A pending wake-up that
// carries no grant is replaced by one that does; a grant is never replaced
// by a plain wake-up. Callers hold the waiters' mutex, so x has one sender
// at a time.
func (x *waiter) wake(v wakeup) {
	for {
		select {
		case x.ch <- v:
			return
		default:
		}
		select {
		case old := <-x.ch:
			if v.token == 0 {
				v = old
			}
		default:
		}
	}
}

// wake wakes every waiter of name; it never blocks.
func (w *waiters) wake(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, x := range w.byName[name] {
		x.wake(wakeup{})
	}
}

// wakeHead wakes the waiter of name that registered first (in this
// process, the one most likely at the head of the name's queue), after a
// release: waking the others would only have them asked again to wait.
func (w *waiters) wakeHead(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if list := w.byName[name]; len(list) > 0 {
		list[0].wake(wakeup{})
	}
}

// wakeRequest wakes the waiter of name with request id, if it waits in
// this process, with v.
func (w *waiters) wakeRequest(name string, id int64, v wakeup) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, x := range w.byName[name] {
		if x.id == id {
			x.wake(v)
		}
	}
}

// wakeAll wakes every waiter (when notifications may have been missed).
func (w *waiters) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, list := range w.byName {
		for _, x := range list {
			x.wake(wakeup{})
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
	// The queue's pace, from the request's own polls: its place (waiters
	// ahead) when it last moved up, and when.
	place   int
	placeAt time.Time
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

// pace sets the next poll of a polling waiter with ahead waiters before it
// from the pace at which its place has moved up: half the time the queue
// would take to bring it to the head at that pace. A waiter far back then
// polls a few times over its wait rather than every pollMax, and one that
// moves up fast polls sooner than its place's cap. Until it has moved up
// once, the usual doubling from pollMin applies.
func (b *backoff) pace(ahead int, now time.Time) {
	switch {
	case b.placeAt.IsZero() || ahead > b.place:
		b.place, b.placeAt = ahead, now // first poll, or moved back (an upgrade went first)
	case ahead < b.place:
		perPlace := now.Sub(b.placeAt) / time.Duration(b.place-ahead)
		b.next = max(perPlace*time.Duration(ahead)/2, pollMin)
		b.place, b.placeAt = ahead, now
	}
}

// sleep waits for a wake-up, the next poll, or expiry (when positive: the
// time at which the blocking holder's lease would expire), whichever comes
// first. ahead is the number of waiters queued before this one (negative
// when unknown). It returns the wake-up it was woken with (zero after a
// poll interval), ctx's error if ctx ends, ErrClosed if the client closes.
func (b *backoff) sleep(ctx context.Context, wake <-chan wakeup, expiry time.Duration, ahead int) (wakeup, error) {
	limit := b.limit(ahead)
	if ahead > 0 && b.c.notified() {
		// Notified, and not at the head: the notification comes when the
		// request reaches the head, so there is nothing to poll for soon.
		b.next = limit
	}
	if ahead > 0 && !b.c.notified() {
		b.pace(ahead, time.Now())
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
		return wakeup{}, ctx.Err()
	case <-b.c.closed:
		return wakeup{}, ErrClosed
	case v := <-wake:
		b.next = pollMin
		return v, nil
	case <-t.C:
	}
	return wakeup{}, nil
}
