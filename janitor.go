package sqldlm

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// janitor retries, in the background, the cleanups that could not reach the
// database when they were due: a release, a withdrawn request, the row of a
// lease the client gave up. Callers never wait for it (Release cannot fail
// the caller); the lease's expiry is the backstop for all of them.
type janitor struct {
	c     *Client
	mu    sync.Mutex
	tasks []*task
	// running holds the tasks of the pass in progress (taken out of
	// tasks), so that cleanNow finds them too.
	running []*task
	// leaving holds the join requests whose withdrawal (a leave) is left
	// to the janitor, until it succeeds or their lease ends: a Join that
	// finds one of them in its way withdraws it at once (leaveNow).
	leaving map[dialect.MemberRef]struct{}
	kick    chan struct{}
	stop    chan struct{}
	exited  chan struct{}
	// ctx is the parent of every attempt but the final pass's; halt
	// cancels it, so that a pass in progress does not delay Close.
	ctx    context.Context
	cancel context.CancelFunc
}

type task struct {
	what string
	run  func(ctx context.Context) error
	// until reports whether the task is still worth doing.
	until func() bool
	// notBefore delays the first attempt.
	notBefore time.Time
	// lease and name, for a task that frees a hold or a request of name
	// under lease (a release, a withdrawal): a request of the client's own
	// that finds the name held runs it at once (cleanNow).
	lease int64
	name  string
	// done is set once cleanNow has run the task: the janitor drops it.
	done atomic.Bool
}

func newJanitor(c *Client) *janitor {
	ctx, cancel := context.WithCancel(context.Background())
	return &janitor{c: c, leaving: map[dialect.MemberRef]struct{}{},
		kick: make(chan struct{}, 1), stop: make(chan struct{}), exited: make(chan struct{}), ctx: ctx, cancel: cancel}
}

// halt ends the pass in progress and makes the janitor run its final pass
// and exit.
func (j *janitor) halt() {
	j.cancel()
	close(j.stop)
}

func (j *janitor) add(t *task) {
	j.mu.Lock()
	j.tasks = append(j.tasks, t)
	j.mu.Unlock()
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// release deletes a hold, for as long as its lease lives: once the lease
// has ended, deleting the lease covers the hold.
func (j *janitor) release(l *lease, ref *dialect.HoldRef) {
	j.add(&task{
		what: "release",
		run: func(ctx context.Context) error {
			_, err := j.c.dialect.Release(ctx, j.c.db, ref)
			if err == nil {
				j.c.waiters.wake(ref.Name)
			}
			return err
		},
		until: l.live,
		lease: l.id,
		name:  ref.Name,
	})
}

// abandon withdraws a request (its waiter row, and a grant it may have
// obtained unseen) while its lease lives. A withdrawal is final, so the
// task is done once one attempt succeeds.
func (j *janitor) abandon(l *lease, name string, requestID int64) {
	j.add(&task{
		what: "withdraw request",
		run: func(ctx context.Context) error {
			return j.c.withdraw(ctx, l, name, requestID)
		},
		until: l.live,
		lease: l.id,
		name:  name,
	})
}

// leave deletes a membership (and withdraws its request) while its lease
// lives: once the lease has ended, the membership is gone with it.
func (j *janitor) leave(l *lease, ref dialect.MemberRef) {
	j.mu.Lock()
	j.leaving[ref] = struct{}{}
	j.mu.Unlock()
	j.add(&task{
		what: "leave group",
		run: func(ctx context.Context) error {
			_, err := j.c.dialect.Leave(ctx, j.c.db, &ref)
			if err == nil {
				j.left(ref)
			}
			return err
		},
		until: func() bool {
			if l.live() {
				return true
			}
			j.left(ref)
			return false
		},
	})
}

// left forgets a join request whose withdrawal is done.
func (j *janitor) left(ref dialect.MemberRef) {
	j.mu.Lock()
	delete(j.leaving, ref)
	j.mu.Unlock()
}

// leaveNow withdraws at once, within ctx, the join requests of id in group
// under lease whose withdrawal was left to the janitor (a Join whose
// outcome stayed unknown, and whose withdrawal did not reach the database
// within its bound). It reports whether there was one and every withdrawal
// succeeded: the caller's Join, refused because of the member row such a
// request made, may then ask again. A task of the janitor that runs the
// same withdrawal too finds nothing left to do.
func (j *janitor) leaveNow(ctx context.Context, lease int64, group, id string) bool {
	j.mu.Lock()
	var refs []dialect.MemberRef
	for ref := range j.leaving {
		if ref.LeaseID == lease && ref.Group == group && ref.ID == id {
			refs = append(refs, ref)
		}
	}
	j.mu.Unlock()
	for _, ref := range refs {
		if _, err := retryStatement(ctx, func() (bool, error) { return j.c.dialect.Leave(ctx, j.c.db, &ref) }); err != nil {
			j.c.logger.Debug("sqldlm: withdrawing an earlier join failed", "group", group, "member", id, "error", err)
			return false
		}
		j.left(ref)
	}
	return len(refs) > 0
}

// abandonUpgrade cleans up after an upgrade whose outcome stayed unknown
// because its withdrawal failed (the handle has already been ended with
// ErrLost): it withdraws the upgrade request, deleting the exclusive hold
// it may have obtained, then releases the handle's shared hold (gone
// already if the upgrade replaced it), while the lease lives.
func (j *janitor) abandonUpgrade(l *lease, name string, requestID, sharedToken int64) {
	j.add(&task{
		what: "withdraw an upgrade and release the shared hold",
		run: func(ctx context.Context) error {
			if err := j.c.withdraw(ctx, l, name, requestID); err != nil {
				return err
			}
			if _, err := j.c.dialect.Release(ctx, j.c.db, &dialect.HoldRef{Name: name, LeaseID: l.id, Token: sharedToken}); err != nil {
				return err
			}
			j.c.waiters.wake(name)
			return nil
		},
		until: l.live,
		lease: l.id,
		name:  name,
	})
}

// cleanNow runs at once, within ctx, the tasks that free a hold or a
// request of name under lease (a release or a withdrawal that did not
// reach the database when it was due). It reports whether there was one
// and every one succeeded: the caller's request, refused because name is
// held, may be refused by the client's own hold, and may then ask again.
// The janitor drops the tasks cleanNow ran; one that a pass in progress
// is running too runs twice, which a release and a withdrawal allow (the
// second finds nothing to do).
func (j *janitor) cleanNow(ctx context.Context, lease int64, name string) bool {
	j.mu.Lock()
	var due []*task
	for _, t := range append(j.tasks[:len(j.tasks):len(j.tasks)], j.running...) {
		if t.lease == lease && t.name == name && !t.done.Load() {
			due = append(due, t)
		}
	}
	j.mu.Unlock()
	for _, t := range due {
		tctx, cancel := context.WithTimeout(ctx, j.c.cfg.cleanupTimeout())
		err := t.run(tctx)
		cancel()
		if err != nil {
			j.c.logger.Debug("sqldlm: running a pending cleanup at once failed", "task", t.what, "lock_name", name, "error", err)
			return false
		}
		t.done.Store(true)
	}
	return len(due) > 0
}

// deleteLease deletes a lease the client gave up, until deadline: after it
// the lease has expired in the database anyway, and the reaper or the next
// grant frees what it held.
func (j *janitor) deleteLease(id int64, deadline time.Time) {
	j.add(&task{
		what: "delete lease",
		run: func(ctx context.Context) error {
			names, err := j.c.dialect.DeleteLease(ctx, j.c.db, id)
			for _, n := range names {
				j.c.waiters.wake(n)
			}
			return err
		},
		until: func() bool { return time.Now().Before(deadline) },
	})
}

// run works through the tasks, retrying failures with backoff, until stop.
func (j *janitor) run() {
	defer close(j.exited)
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	wait := newExpBackoff(50*time.Millisecond, 2*time.Second)
	for {
		select {
		case <-j.stop:
			j.pass(true)
			return
		case <-j.kick:
		case <-retry.C:
		}
		failed, next := j.pass(false)
		if !failed {
			wait.reset()
		} else {
			next = min(next, wait.next())
		}
		retry.Reset(next)
	}
}

// pass tries every pending task that is due once. It reports whether one
// failed, and how long until the next delayed task is due (an hour if none).
// On the final pass (the client closing) every task still worth doing gets
// one attempt, delayed ones too, all within one shared bound: the TTL or 5
// seconds, whichever is shorter. Tasks the bound leaves no time for are
// dropped; the lease's expiry is their backstop.
func (j *janitor) pass(final bool) (failedAny bool, next time.Duration) {
	j.mu.Lock()
	tasks := j.tasks
	j.tasks = nil
	j.running = tasks
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		j.running = nil
		j.mu.Unlock()
	}()
	next = time.Hour
	parent := j.ctx
	if final {
		var cancel context.CancelFunc
		parent, cancel = context.WithTimeout(context.Background(), j.c.cfg.closeTimeout())
		defer cancel()
	}
	var failed []*task
	for _, t := range tasks {
		if t.done.Load() || !t.until() {
			continue
		}
		if wait := time.Until(t.notBefore); wait > 0 && !final {
			failed = append(failed, t) // not due yet: keep it
			next = min(next, wait)
			continue
		}
		if final && parent.Err() != nil {
			j.c.logger.Debug("sqldlm: background cleanup dropped at close: no time left", "task", t.what)
			continue
		}
		ctx, cancel := context.WithTimeout(parent, j.c.cfg.cleanupTimeout())
		err := t.run(ctx)
		cancel()
		if err != nil {
			j.c.logger.Debug("sqldlm: background cleanup failed", "task", t.what, "error", err)
			failed = append(failed, t)
			failedAny = true
		}
	}
	if final {
		return false, next
	}
	j.mu.Lock()
	j.tasks = append(failed, j.tasks...)
	j.running = nil
	j.mu.Unlock()
	return failedAny, next
}
