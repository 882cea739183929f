package sqldlm

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// waiters lets a release in this process, or a notification from the
// database, wake the goroutines waiting for that name at once.
type waiters struct {
	mu     sync.Mutex
	byName map[string]map[chan struct{}]struct{}
}

func newWaiters() *waiters { return &waiters{byName: map[string]map[chan struct{}]struct{}{}} }

// register returns a channel that receives a value when name is released,
// and a function to stop listening.
func (w *waiters) register(name string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	set := w.byName[name]
	if set == nil {
		set = map[chan struct{}]struct{}{}
		w.byName[name] = set
	}
	set[ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(set, ch)
		if len(set) == 0 && w.byName[name] != nil && len(w.byName[name]) == 0 {
			delete(w.byName, name)
		}
		w.mu.Unlock()
	}
}

// wake wakes every waiter of name; it never blocks.
func (w *waiters) wake(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.byName[name] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// wakeAll wakes every waiter (when notifications may have been missed).
func (w *waiters) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, set := range w.byName {
		for ch := range set {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

// Polling bounds. Waiters poll with capped exponential backoff and jitter;
// where the database notifies releases (PostgreSQL, while its listening
// connection is up) the cap is much longer, since polls only cover missed
// notifications and expiring holders (whose expiry wakes the waiter anyway).
const (
	pollMin         = 2 * time.Millisecond
	pollMax         = 200 * time.Millisecond
	pollMaxNotified = 2 * time.Second
)

type backoff struct {
	c    *Client
	next time.Duration
}

func newBackoff(c *Client) *backoff { return &backoff{c: c, next: pollMin} }

// sleep waits for a wake-up, the next poll, or expiry (when positive: the
// time at which the blocking holder's lease would expire), whichever comes
// first. It returns ctx's error if ctx ends, ErrClosed if the client closes.
func (b *backoff) sleep(ctx context.Context, wake <-chan struct{}, expiry time.Duration) error {
	limit := pollMax
	if b.c.notified() {
		limit = pollMaxNotified
	}
	d := min(b.next, limit)
	b.next = min(b.next*2, limit)
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
