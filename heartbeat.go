package sqldlm

import (
	"context"
	"time"
)

// heartbeat renews the lease about every TTL/3 with one statement, however
// many locks it holds, until the lease ends (the first time sooner if the
// lease's creation was slow). A renewal that fails is retried
// sooner; the lease is declared lost when the database says it is no longer
// live, or when the local deadline passes without a successful renewal (the
// deadline timer fires independently of a renewal in flight).
func (l *lease) heartbeat() {
	interval := l.c.cfg.renewInterval()
	retry := l.c.cfg.renewRetry()
	// The first renewal comes after TTL/3, or sooner when the lease's
	// creation was slow: its deadline counts from the creation's send, and
	// half the time left leaves the renewal the other half to succeed in.
	l.mu.Lock()
	first := min(interval, time.Until(l.deadline)/2)
	l.mu.Unlock()
	timer := time.NewTimer(first)
	defer timer.Stop()
	for {
		select {
		case <-l.ended:
			return
		case <-timer.C:
		case <-l.kick:
		}
		l.mu.Lock()
		deadline := l.deadline
		l.mu.Unlock()
		sent := time.Now()
		// One attempt waits at most a renewal interval (and never past the
		// deadline): a renewal stuck on a connection that no longer answers
		// is then retried, on another connection, while the lease can still
		// be saved. An attempt given up may still commit in the server; that
		// only extends the server's expiry, never the local deadline, which
		// moves only on a renewal whose success was seen.
		attempt := sent.Add(interval)
		if deadline.Before(attempt) {
			attempt = deadline
		}
		ctx, cancel := context.WithDeadline(context.Background(), attempt)
		renewed, err := l.c.dialect.RenewLease(ctx, l.c.hbdb, l.id)
		cancel()
		switch {
		case err != nil:
			l.c.logger.Debug("sqldlm: lease renewal failed", "lease_id", l.id, "error", err)
			timer.Reset(retry)
		case !renewed:
			l.end(ErrLost, "the database no longer holds the lease (expired, broken or reaped)")
			return
		default:
			if !l.extend(sent) {
				return
			}
			l.c.hooks.LeaseRenewed(time.Since(sent))
			// The next renewal is due an interval after this one's send,
			// not after its answer: the deadline counts from the send too.
			// An answer seen late (the process paused while it was on its
			// way, or slow) would otherwise shorten the next renewal's time
			// to succeed by as much, to nothing for a pause of 0.57 TTL.
			timer.Reset(max(time.Until(sent.Add(interval)), 0))
		}
	}
}

// renewNow asks the heartbeat for an immediate renewal (to find out at once
// whether a lease the database disowned is lost).
func (l *lease) renewNow() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}
