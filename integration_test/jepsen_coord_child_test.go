//go:build linux

package integration_test

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/jepsen"
)

// The randomized fault test's leader election and semaphore (issue 16): a
// share of the workers' turns (jepsenMix)
// campaign in the election or take a permit of the semaphore, fence 1-3
// transactions with it, and resign or release it. They are recorded as
// operations on the locks they are built on, the election's lock and the
// permit's slot (jepsen.Event.Coord says which), so that every lock
// checker judges them too; their transactions journal themselves in
// coord_journal, numbered by the group's row of coord_cells.

// coordHold is a leadership or a permit a worker holds, with what the
// history records of it.
type coordHold struct {
	coord   string // jepsen.Election or jepsen.Semaphore
	group   string // the election or semaphore
	name    string // the lock: the election's, or the permit's slot
	token   int64  // the term, or the permit's token
	lease   int64
	fence   func(context.Context, *sql.Tx) error
	release func(context.Context) error // Resign, or the permit's Release
}

// coordEvent returns an event of type t of operation f on h (its
// operation id not set).
func (w *jepsenWorker) coordEvent(t, f string, h *coordHold) jepsen.Event {
	return jepsen.Event{P: w.proc, W: w.w, T: t, F: f, Name: h.name, Mode: jepsen.Exclusive, Coord: h.coord, Group: h.group,
		Token: h.token, Lease: h.lease}
}

// campaign campaigns in the election, with a timeout of U(0.1, 2) x TTL.
// It returns nil if the worker was not elected.
func (w *jepsenWorker) campaign(ctx context.Context) *coordHold {
	w.counts.Add("campaign")
	name := sqldlm.ElectionPrefix + jepsenElection
	id := w.ids.Add(1)
	w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Invoke, F: jepsen.Acquire, Name: name, Mode: jepsen.Exclusive,
		Coord: jepsen.Election, Group: jepsenElection})
	cctx, cancel := context.WithTimeout(ctx, w.between(0.1, 2))
	ld, err := w.c.Campaign(cctx, jepsenElection, fmt.Sprintf("p%d.w%d", w.proc, w.w))
	cancel()
	if err != nil {
		// As for a lock: a failed campaign is withdrawn, and leaves the
		// model unchanged either way.
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Fail, F: jepsen.Acquire, Err: err.Error()})
		return nil
	}
	h := &coordHold{coord: jepsen.Election, group: jepsenElection, name: name, token: ld.Term(), lease: w.knobs.LeaseOf(ld),
		fence: ld.Fence, release: ld.Resign}
	w.granted(id, jepsen.Acquire, h, ld.Done(), ld.Err)
	return h
}

// takePermit takes a permit of the semaphore with Acquire (with a timeout
// of U(0.1, 2) x TTL) or, a quarter of the time, TryAcquire. It returns
// nil if it got none.
func (w *jepsenWorker) takePermit(ctx context.Context) *coordHold {
	sem := w.c.Semaphore(jepsenSemaphore, jepsenSemaphoreLimit)
	f, timeout := jepsen.Acquire, w.between(0.1, 2)
	if w.rng.Float64() < 0.25 {
		f, timeout = jepsen.TryAcquire, w.ttl
	}
	w.counts.Add("semaphore " + f)
	id := w.ids.Add(1)
	// The slot, and so the lock name, is known once granted.
	w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Invoke, F: f, Mode: jepsen.Exclusive,
		Coord: jepsen.Semaphore, Group: jepsenSemaphore})
	tctx, cancel := context.WithTimeout(ctx, timeout)
	acquire := sem.Acquire
	if f == jepsen.TryAcquire {
		acquire = sem.TryAcquire
	}
	p, err := acquire(tctx)
	cancel()
	if err != nil {
		w.rec.Record(jepsen.Event{P: w.proc, W: w.w, Op: id, T: jepsen.Fail, F: f, Err: err.Error()})
		return nil
	}
	h := &coordHold{coord: jepsen.Semaphore, group: jepsenSemaphore, name: sqldlm.SemaphorePrefix + jepsenSemaphore + "#" + strconv.Itoa(p.Slot()),
		token: p.Token(), lease: w.knobs.LeaseOf(p), fence: p.Fence, release: p.Release}
	w.granted(id, f, h, p.Done(), p.Err)
	return h
}

// granted records that operation id (f) was granted h, and watches for
// h's loss.
func (w *jepsenWorker) granted(id int64, f string, h *coordHold, done <-chan struct{}, errOf func() error) {
	e := w.coordEvent(jepsen.OK, f, h)
	e.Op = id
	w.rec.Record(e)
	w.watchLost(done, errOf, func() jepsen.Event { return w.coordEvent(jepsen.Lost, "", h) })
}

// coordSection runs 1-3 fenced transactions under h, with a lock's
// critical section's pauses between them, then resigns the leadership or
// releases the permit with a 1s context. Each transaction adds one to the
// group's cell (its row stays locked until the transaction ends, so the
// counters number the group's commits) and journals itself with the
// counter it wrote.
func (w *jepsenWorker) coordSection(ctx context.Context, h *coordHold) {
	cs := int64(w.proc)<<32 | w.ids.Add(1)
	k := 1 + w.rng.IntN(3)
	for seq := 1; seq <= k; seq++ {
		inv := w.coordEvent(jepsen.Invoke, jepsen.Fence, h)
		inv.CS, inv.Seq = cs, seq
		w.fenced(ctx, inv, h.fence, func(ctx context.Context, tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, q(w.kind, `UPDATE coord_cells SET counter = counter + 1 WHERE grp = ?`), h.group); err != nil {
				return err
			}
			var counter int64
			if err := tx.QueryRowContext(ctx, q(w.kind, `SELECT counter FROM coord_cells WHERE grp = ?`), h.group).Scan(&counter); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, q(w.kind, `INSERT INTO coord_journal (op_id, seq, coord, grp, name, token, lease_id, client, counter)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`), cs, seq, h.coord, h.group, h.name, h.token, h.lease, fmt.Sprintf("p%d.w%d", w.proc, w.w), counter)
			return err
		})
		if seq < k {
			w.pause()
		}
	}
	w.counts.Add(h.coord + " release")
	w.simple(ctx, w.coordEvent(jepsen.Invoke, jepsen.Release, h), h.release)
}
