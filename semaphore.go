package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// SemaphorePrefix starts the lock names of every semaphore. A semaphore
// NAME with limit N is built on the exclusive locks
//
//   - "sqldlm:semaphore:NAME#0" ... "sqldlm:semaphore:NAME#<N-1>", its slots:
//     a permit is an exclusive hold of one slot, with the payload "limit=N";
//     the permit's fencing token is that hold's token;
//   - "sqldlm:semaphore:NAME", its queue: an acquirer holds it exclusively
//     while it picks a slot, so acquirers are served in arrival order.
//
// Semaphores therefore show in [Client.Locks], `sqldlm locks` and
// sqldlm_holders_view. This is the contract for a client in another
// language, which acquires a permit with the lock routines: take the queue
// lock (waiting in its queue); read the holders of the names starting with
// "sqldlm:semaphore:NAME#"; if a live one has a payload other than
// "limit=N", release the queue and refuse (the limit differs); otherwise
// take a slot K < N that no live lease holds, without waiting and under the
// same lease as the queue hold, with the payload "limit=N"; if every slot
// is held, read again later (a slot's release or its holder's expiry frees
// it) while keeping the queue; then release the queue. A permit is released
// by releasing its slot.
const SemaphorePrefix = "sqldlm:semaphore:"

// SemaphoreMaxLimit is the largest limit a semaphore accepts.
const SemaphoreMaxLimit = 1024

// semaphoreTryWait bounds how long TryAcquire waits for an acquirer that
// holds the semaphore's queue while a permit is free: it is taking that
// permit (or about to notice it can), and is served first.
const semaphoreTryWait = time.Second

// errQueueLost: the semaphore's queue lock was lost while its holder
// picked a slot; the acquirer queues again.
var errQueueLost = errors.New("sqldlm: the semaphore's queue lock was lost")

// Semaphore is a counting semaphore: at most Limit clients hold one of its
// permits at any instant of the database's clock. Get one with
// [Client.Semaphore]; its methods are safe for concurrent use.
type Semaphore struct {
	c       *Client
	name    string
	limit   int
	queue   string // the queue lock's name
	payload string // "limit=N", every slot hold's payload
	err     error  // a bad name or limit, returned by Acquire and TryAcquire
}

// Permit is one held permit of a [Semaphore]: an exclusive hold of one of
// its slots. Like a [Lock], it is the holder that learns first: Done
// closes and Err returns ErrLost before another acquirer can take the
// permit over.
type Permit struct {
	sem  string
	slot int
	l    *Lock
}

// Semaphore returns the semaphore name with at most limit permit holders.
// It does no I/O: a bad name or limit (1 to SemaphoreMaxLimit) is
// reported by Acquire and TryAcquire. Every client must use the same limit
// for a name: an acquirer whose limit differs from the one of the permits
// held gets ErrLimitMismatch; a new limit is accepted once no permit of the
// old one is held by a live lease.
func (c *Client) Semaphore(name string, limit int) *Semaphore {
	s := &Semaphore{c: c, name: name, limit: limit, queue: SemaphorePrefix + name, payload: "limit=" + strconv.Itoa(limit)}
	switch {
	case name == "":
		s.err = fmt.Errorf("%w: the semaphore name is empty", ErrInvalidName)
	case limit < 1 || limit > SemaphoreMaxLimit:
		s.err = fmt.Errorf("sqldlm: semaphore %q: invalid limit %d: use 1 to %d", name, limit, SemaphoreMaxLimit)
	default:
		if last := s.slot(limit - 1); ValidateName(last) != nil {
			s.err = fmt.Errorf("semaphore %q (its lock names run up to %q, at most %d bytes): %w",
				name, last, NameMaxBytes, ValidateName(last))
		}
	}
	return s
}

// Name returns the semaphore's name.
func (s *Semaphore) Name() string { return s.name }

// Limit returns the semaphore's limit.
func (s *Semaphore) Limit() int { return s.limit }

// slot returns the lock name of slot k.
func (s *Semaphore) slot(k int) string { return s.queue + "#" + strconv.Itoa(k) }

// Acquire blocks until the client holds a permit, or ctx ends (ctx's
// error; a *WaitError that says what was in the way: the permit holder
// whose lease ends soonest, or an acquirer queued first), or the client
// closes (ErrClosed). Acquirers get permits in the order they began to
// ask: a waiter is not overtaken by later ones, so it is not starved. When
// its turn comes, it returns ErrLimitMismatch if permits of another limit
// are held. An acquirer that crashes while it is first in line holds the
// others up until its lease expires, as a crashed lock holder does.
//
// Acquire returns only a permit whose lease is live and trusted. Failures
// to reach the database are waited out as [Client.Lock] does.
func (s *Semaphore) Acquire(ctx context.Context) (*Permit, error) {
	if s.err != nil {
		return nil, s.err
	}
	for {
		q, err := s.c.acquire(ctx, s.queue, Exclusive, true, []LockOption{WithPayload(s.payload)})
		if err != nil {
			return nil, opError("acquire", s.name, err)
		}
		p, err := s.await(ctx, q)
		s.releaseQueue(ctx, q)
		if errors.Is(err, errQueueLost) && ctx.Err() == nil {
			s.c.logger.Debug("sqldlm: semaphore queue lock lost while picking a slot, queueing again", "lock_name", s.queue)
			continue
		}
		return p, opError("acquire", s.name, err)
	}
}

// TryAcquire returns a permit if one is free and nobody is queued for one;
// otherwise a *LockedError (matching ErrLocked) naming the semaphore's
// queue lock, with the owner of the permit whose lease ends soonest, or,
// when only acquirers queued first are in the way, no owner and their
// number. When a permit is free but another acquirer is taking one (it
// holds the queue, nobody else waits), TryAcquire waits for it, at most 1s,
// and then looks again. If the database cannot be reached it fails at
// once, as [Client.TryLock] does. It returns ErrLimitMismatch when permits
// of another limit are held.
func (s *Semaphore) TryAcquire(ctx context.Context) (*Permit, error) {
	if s.err != nil {
		return nil, s.err
	}
	c := s.c
	opts := []LockOption{WithPayload(s.payload)}
	q, err := c.acquire(ctx, s.queue, Exclusive, false, opts)
	if err != nil {
		var le *LockedError
		if !errors.As(err, &le) {
			return nil, opError("tryacquire", s.name, err)
		}
		st, err := s.read(ctx)
		if err != nil {
			return nil, opError("tryacquire", s.name, err)
		}
		if st.mismatch != nil {
			return nil, opError("tryacquire", s.name, st.mismatch)
		}
		if le.WaitersAhead > 0 || len(st.free) == 0 {
			return nil, s.locked(st, le)
		}
		wctx, cancel := context.WithTimeout(ctx, semaphoreTryWait)
		q, err = c.acquire(wctx, s.queue, Exclusive, true, opts)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.As(err, &le) {
				return nil, s.locked(slots{}, le)
			}
			return nil, opError("tryacquire", s.name, err)
		}
	}
	p, st, err := s.pick(ctx, q)
	s.releaseQueue(ctx, q)
	if errors.Is(err, errQueueLost) {
		err = fmt.Errorf("%w: the lease ended while a permit was picked", ErrLost)
	}
	switch {
	case err != nil:
		return nil, opError("tryacquire", s.name, err)
	case p == nil:
		return nil, s.locked(st, nil)
	}
	return p, nil
}

// releaseQueue releases the queue lock q once a slot was picked (or not).
func (s *Semaphore) releaseQueue(ctx context.Context, q *Lock) {
	if err := q.Release(context.WithoutCancel(ctx)); err != nil && !errors.Is(err, ErrLost) {
		s.c.logger.Debug("sqldlm: releasing a semaphore's queue lock failed", "lock_name", s.queue, "error", err)
	}
}

// locked returns the *LockedError of a TryAcquire refused because of the
// slots' holders in st, or (when none is known) of the acquirers queued
// first that le reported.
func (s *Semaphore) locked(st slots, le *LockedError) *LockedError {
	out := &LockedError{Name: s.queue}
	if le != nil {
		out.WaitersAhead = le.WaitersAhead
		if le.Owner != "" {
			out.WaitersAhead++ // the queue's holder is an acquirer too
		}
	}
	if b := st.blocker; b != nil && len(st.free) == 0 {
		out.Owner, out.Mode, out.ExpiresIn = b.Owner, Exclusive, b.ExpiresIn
	}
	return out
}

// slots is what a read of a semaphore's slots found.
type slots struct {
	free     []int       // slots below the limit that no live lease holds
	blocker  *HolderInfo // the live holder whose lease expires first
	mismatch error       // a live holder of another limit, if any
}

// read reads the holders of the semaphore's slots.
func (s *Semaphore) read(ctx context.Context) (slots, error) {
	var st slots
	infos, err := s.c.admin().Locks(ctx, Filter{Prefix: s.queue + "#"})
	if err != nil {
		return st, err
	}
	held := make([]bool, semaphoreSlots(s.limit))
	for _, info := range infos {
		k, ok := s.slotIndex(info.Name)
		if !ok {
			continue // another semaphore's ("NAME#x" for NAME)
		}
		for _, h := range info.Holders {
			if !h.Live {
				continue // dead: the slot is taken over with it
			}
			if h.Payload != s.payload && st.mismatch == nil {
				st.mismatch = fmt.Errorf("%w: semaphore %q is in use with %q (slot %d, held by %q), not %s: "+
					"use the same limit in every client, or wait until no permit of the other limit is held",
					ErrLimitMismatch, s.name, h.Payload, k, h.Owner, s.payload)
			}
			if k < len(held) {
				held[k] = true
			}
			if st.blocker == nil || h.ExpiresIn < st.blocker.ExpiresIn {
				st.blocker = &h
			}
		}
	}
	for k, h := range held {
		if !h {
			st.free = append(st.free, k)
		}
	}
	return st, nil
}

// slotIndex returns k for the lock name of the semaphore's slot k.
func (s *Semaphore) slotIndex(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, s.queue+"#")
	if !ok {
		return 0, false
	}
	k, err := strconv.Atoi(rest)
	if err != nil || k < 0 || strconv.Itoa(k) != rest {
		return 0, false
	}
	return k, true
}

// pick reads the slots and takes a free one, holding the queue lock q. It
// returns the permit, or nil and what it read when every slot is held. It
// returns errQueueLost when q was lost: a slot taken then is given back.
func (s *Semaphore) pick(ctx context.Context, q *Lock) (*Permit, slots, error) {
	st, err := s.read(ctx)
	if err != nil {
		return nil, st, err
	}
	if st.mismatch != nil {
		return nil, st, st.mismatch
	}
	if len(st.free) == 0 && s.cleanOwn(ctx, q.lease.id) {
		// A slot may have been held by one of this client's own permits
		// whose release was left to the janitor: it has just run.
		if st, err = s.read(ctx); err != nil {
			return nil, st, err
		}
		if st.mismatch != nil {
			return nil, st, st.mismatch
		}
	}
	for _, k := range st.free {
		l, err := s.c.acquire(ctx, s.slot(k), Exclusive, false, []LockOption{WithPayload(s.payload)})
		switch {
		case errors.Is(err, ErrLocked):
			continue // taken since the read (by a client outside the protocol)
		case errors.Is(err, ErrLost):
			return nil, st, errQueueLost // the lease ended: the queue hold with it
		case err != nil:
			return nil, st, err
		}
		// The slot counts only if it was granted under the lease that
		// holds the queue: the database then checked, as it granted,
		// that the queue was still held, so no other acquirer picked a
		// slot between the read and the grant.
		if l.lease != q.lease || q.Err() != nil {
			if err := l.Release(context.WithoutCancel(ctx)); err != nil && !errors.Is(err, ErrLost) {
				s.c.logger.Debug("sqldlm: giving back a semaphore slot failed", "lock_name", l.name, "error", err)
			}
			return nil, st, errQueueLost
		}
		return &Permit{sem: s.name, slot: k, l: l}, st, nil
	}
	if q.Err() != nil {
		return nil, st, errQueueLost
	}
	return nil, st, nil
}

// cleanOwn runs at once the cleanups of the semaphore's slots under lease
// that were left to the janitor (a permit's release, a slot's request
// withdrawn, when the database could not be reached), and reports whether
// there were any and all succeeded.
func (s *Semaphore) cleanOwn(ctx context.Context, lease int64) bool {
	ran := false
	for k := range s.limit {
		if s.c.janitor.cleanNow(ctx, lease, s.slot(k)) {
			ran = true
		}
	}
	return ran
}

// await picks a slot, holding the queue lock q, waiting for one to be
// freed when all are held: woken by a release in this process (or a
// notification), at the expiry of the first holder's lease unless renewed,
// or by a poll, at most every Config.WatchInterval (and 200ms).
func (s *Semaphore) await(ctx context.Context, q *Lock) (*Permit, error) {
	c := s.c
	names := make([]string, s.limit)
	for k := range names {
		names[k] = s.slot(k)
	}
	wake, unregister := c.waiters.observe(names...)
	defer unregister()
	poll := newExpBackoff(pollMin, min(c.cfg.WatchInterval, pollMax))
	var last slots // what the last read that succeeded found
	gaveUp := func() error {
		if last.blocker == nil {
			return ctx.Err()
		}
		return &WaitError{Err: ctx.Err(), Blocker: s.locked(last, nil)}
	}
	for {
		sent := time.Now()
		p, st, err := s.pick(ctx, q)
		cost := time.Since(sent)
		switch {
		case p != nil:
			return p, nil
		case err == nil:
			last = st
		case ctx.Err() != nil:
			return nil, gaveUp()
		case transientError(err):
			c.logger.Debug("sqldlm: semaphore: reading or taking a slot failed, retrying", "lock_name", s.queue, "error", err)
		default:
			return nil, err
		}
		d := poll.next()
		if !c.notified() {
			d = max(d, min(pollCostFactor*cost, pollMax)) // leave the database to the others
		}
		d = d/2 + rand.N(d/2+1)
		if b := last.blocker; err == nil && b != nil && len(last.free) == 0 && b.ExpiresIn > 0 && b.ExpiresIn < d {
			d = b.ExpiresIn + time.Millisecond
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, gaveUp()
		case <-c.closed:
			t.Stop()
			return nil, ErrClosed
		case <-q.Done():
			t.Stop()
			return nil, errQueueLost
		case <-wake:
			poll.reset()
		case <-t.C:
		}
		t.Stop()
	}
}

// transientError reports whether err is a failure to reach the database
// (or a statement rolled back) that a waiting acquirer waits out.
func transientError(err error) bool {
	return errors.Is(err, dialect.ErrConnection) || dialect.IsRetryable(err)
}

// Semaphore returns the name of the permit's semaphore.
func (p *Permit) Semaphore() string { return p.sem }

// Slot returns which of the semaphore's slots the permit holds, from 0 to
// its limit - 1.
func (p *Permit) Slot() int { return p.slot }

// Token returns the permit's fencing token: strictly greater than the
// token of every earlier permit of the same slot (see [Permit.Slot]), and
// of every earlier grant of that slot's lock name.
func (p *Permit) Token() int64 { return p.l.Token() }

// Done is closed when the permit ends: released, lost, or the client
// closed.
func (p *Permit) Done() <-chan struct{} { return p.l.Done() }

// Err is nil while the permit is held. After Done closed it is ErrLost
// when the permit was lost (the lease expired or was broken: another
// acquirer may hold it now) and ErrReleased after Release or Client.Close.
func (p *Permit) Err() error { return p.l.Err() }

// Fence checks, inside the caller's transaction tx, that the permit is
// still held, and keeps any other acquirer from taking it over until tx
// ends, as [Lock.Fence] does. A lost permit's Fence fails with ErrLost.
func (p *Permit) Fence(ctx context.Context, tx *sql.Tx) error { return p.l.Fence(ctx, tx) }

// Release gives the permit back. It is idempotent and, like
// [Lock.Release], cannot fail the caller: if the database cannot be
// reached it retries in the background and the lease's expiry frees the
// permit at the latest. It returns ErrLost if the permit had been lost.
func (p *Permit) Release(ctx context.Context) error {
	err := p.l.Release(ctx)
	// An acquirer of this process waiting for a free slot need not wait
	// for its next poll (the database notifies nobody: nobody waits in the
	// slot's own queue).
	p.l.c.waiters.wakeHead(p.l.name)
	return err
}
