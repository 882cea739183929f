package sqldlm

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

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

// retryStatement runs one idempotent single-statement operation, again
// after a deadlock, a serialization failure or a lock wait timeout (the
// statement was rolled back: running it again is safe), a few times.
func retryStatement[T any](ctx context.Context, run func() (T, error)) (T, error) {
	// Five attempts: four waits of 5, 10, 20 and 40ms (before jitter).
	wait := newExpBackoff(5*time.Millisecond, 40*time.Millisecond)
	for attempt := 1; ; attempt++ {
		v, err := run()
		if err == nil || !dialect.IsRetryable(err) || attempt == 5 {
			return v, err
		}
		if !sleepCtx(ctx, jitter(wait.next())) {
			return v, err
		}
	}
}

// expBackoff is a capped doubling delay: first, then twice the previous
// one, up to max. The client's generic retry loops use it (a statement
// retried, the janitor's failed tasks, the notification listener's
// reconnections, a TryLockTx transaction's watcher, a downgrade); a
// waiter's polls have the queue-paced backoff above.
type expBackoff struct {
	first, max, cur time.Duration
}

func newExpBackoff(first, max time.Duration) expBackoff {
	return expBackoff{first: first, max: max, cur: first}
}

// next returns the current delay and doubles it, up to max, for the next
// call.
func (b *expBackoff) next() time.Duration {
	d := b.cur
	b.cur = min(b.cur*2, b.max)
	return d
}

// reset makes the next delay the first one again.
func (b *expBackoff) reset() { b.cur = b.first }

// jitter returns a random duration in [d, 2d).
func jitter(d time.Duration) time.Duration { return d + rand.N(d) }

// sleepCtx waits for d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool { return sleepUntil(d, ctx.Done(), nil) }

// sleepUntil waits for d or until a or b (nil: never) is closed; it reports
// whether d passed.
func sleepUntil(d time.Duration, a, b <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-a:
		return false
	case <-b:
		return false
	case <-t.C:
		return true
	}
}
