package sqldlm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Request names one lock of a set for [Client.LockAll].
type Request struct {
	Name    string
	Mode    Mode
	Payload string // optional, as WithPayload
}

// LockAll acquires every request, waiting as Lock does, all or nothing: it
// returns one handle per request, in the order of reqs, or no handle and an
// error. The names are taken in one global order (byte-wise), so that two
// LockAll calls over overlapping sets, in any order, never wait for each
// other in a cycle: they cannot deadlock. If any lock cannot be had (ctx
// ends, the client closes), those already taken are released before it
// returns. A name may appear only once.
//
// Every handle it returns was held when LockAll checked, right before
// returning: if a lock taken earlier was lost while LockAll waited for a
// later one (its lease was lost or broken), LockAll releases all of them
// and starts over, as Lock goes on waiting under a new lease, until ctx
// ends.
func (c *Client) LockAll(ctx context.Context, reqs []Request) ([]*Lock, error) {
	// Validate every request before taking any lock, so that a bad one
	// leaves nothing behind in the database.
	for _, r := range reqs {
		if _, err := checkRequest(r.Name, r.Mode, []LockOption{WithPayload(r.Payload)}); err != nil {
			return nil, fmt.Errorf("sqldlm: LockAll: %q: %w", r.Name, err)
		}
	}
	order := make([]int, len(reqs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(reqs[a].Name, reqs[b].Name) })
	for i := 1; i < len(order); i++ {
		if reqs[order[i]].Name == reqs[order[i-1]].Name {
			return nil, fmt.Errorf("sqldlm: LockAll: %q is requested twice: %w", reqs[order[i]].Name, ErrInvalidName)
		}
	}
	for {
		locks, lost, err := c.lockAll(ctx, reqs, order)
		if err != nil || lost == "" {
			return locks, err
		}
		c.logger.Debug("sqldlm: LockAll: a lock was lost while later ones were taken, starting over", "lock_name", lost)
	}
}

// lockAll takes the locks of reqs in order, once. If one taken earlier was
// lost by the time the last was granted, it releases them all and returns
// the lost lock's name.
func (c *Client) lockAll(ctx context.Context, reqs []Request, order []int) (_ []*Lock, lost string, _ error) {
	locks := make([]*Lock, len(reqs))
	for _, i := range order {
		l, err := c.Lock(ctx, reqs[i].Name, reqs[i].Mode, WithPayload(reqs[i].Payload))
		if err != nil {
			// A failed release is retried in the background; a lost lock's
			// ErrLost says nothing the caller needs.
			_ = c.ReleaseAll(context.WithoutCancel(ctx), locks)
			return nil, "", fmt.Errorf("sqldlm: LockAll: %w", err) // Lock's error names the lock
		}
		locks[i] = l
	}
	for _, i := range order {
		if locks[i].Err() != nil {
			_ = c.ReleaseAll(context.WithoutCancel(ctx), locks)
			return nil, reqs[i].Name, nil
		}
	}
	return locks, "", nil
}

// ReleaseAll releases every lock, in the reverse of the global order
// LockAll takes them in; nil entries are skipped. It returns the errors of the releases joined:
// ErrLost for each lock that had been lost before.
func (c *Client) ReleaseAll(ctx context.Context, locks []*Lock) error {
	sorted := slices.DeleteFunc(slices.Clone(locks), func(l *Lock) bool { return l == nil })
	slices.SortFunc(sorted, func(a, b *Lock) int { return strings.Compare(b.name, a.name) })
	var errs []error
	for _, l := range sorted {
		if err := l.Release(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%q: %w", l.name, err))
		}
	}
	return errors.Join(errs...)
}
