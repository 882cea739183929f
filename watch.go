package sqldlm

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// EventKind is what a [GroupEvent] reports.
type EventKind int

// Event kinds.
const (
	// Resync: the watcher (re)read the whole group; View is the group now.
	// The first event of every watch is a Resync, and so is the first after
	// the database could not be read for a while (changes may have come
	// and gone meanwhile).
	Resync EventKind = iota
	// MemberJoined: Member joined (a new id, or an id that came back with a
	// new incarnation, reported after its MemberLeft).
	MemberJoined
	// MemberLeft: Member left, or its lease expired.
	MemberLeft
	// MemberUpdated: Member's meta changed.
	MemberUpdated
)

func (k EventKind) String() string {
	switch k {
	case Resync:
		return "resync"
	case MemberJoined:
		return "joined"
	case MemberLeft:
		return "left"
	case MemberUpdated:
		return "updated"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// GroupEvent is one change of a group seen by a [GroupWatch]. View is the
// group after the change (for a Resync, the group as read).
type GroupEvent struct {
	Kind   EventKind
	Member MemberInfo // the member that changed; zero for Resync
	View   GroupView
}

// GroupWatch delivers a group's changes. Create it with [Client.Watch].
type GroupWatch struct {
	events chan GroupEvent
	cancel context.CancelFunc
	exited chan struct{}
	once   sync.Once
}

// Events returns the channel of the watch's events. It is closed when the
// watch ends: Close, the ctx given to Watch ended, or the client closed.
// Events are delivered in order; a slow reader delays later reads of the
// group, and then sees the changes since as one step of events.
func (w *GroupWatch) Events() <-chan GroupEvent { return w.events }

// Close ends the watch and waits until its goroutine has exited. It is
// idempotent.
func (w *GroupWatch) Close() error {
	w.once.Do(w.cancel)
	<-w.exited
	return nil
}

// Watch reports group's changes: first a Resync with the group as it is,
// then MemberJoined, MemberLeft and MemberUpdated events as they happen.
// It polls the group's generation about every Config.WatchInterval and
// reads the members only when it changed, so a member that crashed is
// reported within its TTL plus one interval, by the database's clock. On
// PostgreSQL every join, leave and update also notifies the client's
// listening connection, and the watch reads the group at once. Events are
// computed from the views read, so a lost notification or a failed read
// delays a change but never loses it.
// Changes that came and went between two reads (a member that joined and
// left) are not reported; a member that left and came back is (its
// incarnation changed): MemberLeft, then MemberJoined.
func (c *Client) Watch(ctx context.Context, group string) (*GroupWatch, error) {
	if err := validateGroupText("group name", group); err != nil {
		return nil, err
	}
	if c.isClosed() {
		return nil, ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &GroupWatch{events: make(chan GroupEvent), cancel: cancel, exited: make(chan struct{})}
	if !c.goStart(func() { c.watch(ctx, group, w) }) {
		cancel()
		return nil, ErrClosed
	}
	return w, nil
}

func (c *Client) watch(ctx context.Context, group string, w *GroupWatch) {
	defer close(w.exited)
	defer close(w.events)
	defer w.cancel()
	g := c.dialect
	// On PostgreSQL every change of the group notifies; elsewhere (and
	// when a notification is lost) the poll finds it.
	woken, stop := c.waiters.observe(groupWakeName(group))
	defer stop()
	send := func(e GroupEvent) bool {
		select {
		case w.events <- e:
			return true
		case <-ctx.Done():
			return false
		case <-c.closed:
			return false
		}
	}
	var (
		view    GroupView
		synced  bool // view is the last view read and delivered
		gen     int64
		failing bool
	)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.closed:
			return
		case <-woken:
		case <-t.C:
		}
		t.Reset(c.cfg.WatchInterval)
		if synced {
			n, err := readGeneration(ctx, g, c.db, group)
			if err != nil {
				if !failing && ctx.Err() == nil {
					c.logger.Debug("sqldlm: watch: reading the generation failed, retrying", "group", group, "error", err)
				}
				failing = true
				continue
			}
			if n == gen && !failing {
				continue
			}
		}
		st, err := readGroup(ctx, g, c.db, group)
		if err != nil {
			if !failing && ctx.Err() == nil {
				c.logger.Debug("sqldlm: watch: reading the members failed, retrying", "group", group, "error", err)
			}
			failing = true
			continue
		}
		next := viewOf(group, st)
		if !synced || failing {
			if !send(GroupEvent{Kind: Resync, View: next}) {
				return
			}
		} else if next.Generation > view.Generation {
			for _, e := range diffViews(view, next) {
				if !send(e) {
					return
				}
			}
		} else {
			continue // an older view than the one delivered: keep that
		}
		view, gen, synced, failing = next, next.Generation, true, false
	}
}

// groupWakeName is the name under which a group's change notifications
// arrive (the PostgreSQL functions' payload 'sqldlm:group:<group>').
func groupWakeName(group string) string { return "sqldlm:group:" + group }

// diffViews returns the events that turn old into next: leaves first, then
// updates and joins, each in id order. A member whose incarnation changed
// left and joined again.
func diffViews(old, next GroupView) []GroupEvent {
	var events []GroupEvent
	for _, m := range old.Members {
		if n, ok := next.Member(m.ID); !ok || n.Incarnation != m.Incarnation {
			events = append(events, GroupEvent{Kind: MemberLeft, Member: m, View: next})
		}
	}
	for _, n := range next.Members {
		m, ok := old.Member(n.ID)
		switch {
		case !ok || m.Incarnation != n.Incarnation:
			events = append(events, GroupEvent{Kind: MemberJoined, Member: n, View: next})
		case m.Meta != n.Meta || m.Weight != n.Weight:
			events = append(events, GroupEvent{Kind: MemberUpdated, Member: n, View: next})
		}
	}
	return events
}
