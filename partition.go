package sqldlm

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"
)

// PartitionPrefix starts the lock names of an exclusive partitioner's
// partitions: partition 7 of group "agents" is the exclusive lock
// "sqldlm:partition:agents:7".
const PartitionPrefix = "sqldlm:partition:"

// PartitionsMax is the most partitions a partitioner accepts.
const PartitionsMax = 65536

// PartitionOptions configures a [Client.Partition].
type PartitionOptions struct {
	// Partitions is the number of fixed partitions, numbered 0 to
	// Partitions-1, spread over the group's members by [GroupView.Ring]
	// (partition i is the ring key strconv.Itoa(i)). Zero means none: the
	// partitioner then only answers which of a set of keys are this
	// member's (Mine, Owns) on the latest view. Required in Exclusive mode.
	Partitions int

	// Exclusive makes ownership fenced: the member owns a partition only
	// while it holds the partition's lock (PartitionPrefix), so two members
	// never own one partition at once, and each ownership has a fencing
	// token ([Partitioner.Lock]). When the view changes, the member releases
	// the partitions it no longer owns on the ring before the new owner can
	// take them; only the partitions that move change hands. Without it
	// (advisory), ownership follows the latest view each member has read:
	// two members may briefly both think they own a partition.
	Exclusive bool

	// Settle is how long the group must stay unchanged before the
	// partitioner acts on a new view, so that a member that flaps (leaves
	// and comes back within it) moves nothing. Defaults to 0 (act at once).
	Settle time.Duration

	// Meta and Weight are the membership's (see WithMeta, WithWeight).
	Meta   string
	Weight float64
}

// PartitionChange is one change of a member's partitions.
type PartitionChange struct {
	// Generation is the group's generation the change follows from.
	Generation int64
	// Added and Removed are the partitions gained and given up, sorted.
	// Both are empty in a partitioner without fixed partitions: re-check
	// your keys with Mine or Owns.
	Added, Removed []int
	// Owned is every partition owned after the change, sorted.
	Owned []int
	// View is the group as the change saw it.
	View GroupView
}

// Partitioner spreads a group's partitions (or keys) over its live
// members: Ceilometer's partitioner, Ironic's hash ring rebalance. Create
// it with [Client.Partition]; it joins the group and follows it until
// Close or the loss of its membership.
type Partitioner struct {
	c       *Client
	group   string
	opts    PartitionOptions
	m       *Membership
	watch   *GroupWatch
	changes chan PartitionChange
	cancel  context.CancelFunc
	exited  chan struct{}

	mu    sync.Mutex
	view  GroupView
	owned map[int]*Lock // owned partitions (the lock is nil in advisory mode)
	sent  bool          // the initial share has been sent
	err   error
}

// Partition joins group as id and spreads the group's partitions over its
// live members, reporting this member's share on Changes. The first change
// (the initial share) is sent once the partitioner has read the group.
func (c *Client) Partition(ctx context.Context, group, id string, opts PartitionOptions) (*Partitioner, error) {
	switch {
	case opts.Partitions < 0 || opts.Partitions > PartitionsMax:
		return nil, fmt.Errorf("%w: %d partitions: use 0 to %d", ErrInvalidMember, opts.Partitions, PartitionsMax)
	case opts.Exclusive && opts.Partitions == 0:
		return nil, fmt.Errorf("%w: an exclusive partitioner needs fixed partitions (PartitionOptions.Partitions)", ErrInvalidMember)
	case opts.Settle < 0:
		return nil, fmt.Errorf("%w: PartitionOptions.Settle is negative (%s)", ErrInvalidMember, opts.Settle)
	}
	if opts.Exclusive {
		if _, err := partitionName(group, opts.Partitions-1); err != nil {
			return nil, err
		}
	}
	jopts := []JoinOption{WithMeta(opts.Meta)}
	if opts.Weight != 0 {
		jopts = append(jopts, WithWeight(opts.Weight))
	}
	m, err := c.Join(ctx, group, id, jopts...)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	w, err := c.Watch(runCtx, group)
	if err != nil {
		cancel()
		_ = m.Leave(ctx)
		return nil, err
	}
	p := &Partitioner{
		c: c, group: group, opts: opts, m: m, watch: w, cancel: cancel,
		changes: make(chan PartitionChange, 16), exited: make(chan struct{}), owned: map[int]*Lock{},
	}
	go p.run(runCtx)
	return p, nil
}

func partitionName(group string, i int) (string, error) {
	name := PartitionPrefix + group + ":" + strconv.Itoa(i)
	if err := ValidateName(name); err != nil {
		return "", fmt.Errorf("%w: group %q is too long for partition lock names (%q): %v", ErrInvalidMember, group, name, err)
	}
	return name, nil
}

// Membership returns the partitioner's membership of the group.
func (p *Partitioner) Membership() *Membership { return p.m }

// Changes delivers the member's share of the partitions each time it
// changes, starting with the initial share. It is closed when the
// partitioner ends (Close, or its membership was lost: see Err).
func (p *Partitioner) Changes() <-chan PartitionChange { return p.changes }

// Err is nil while the partitioner runs; ErrLost if its membership was
// lost (every partition was given up first), the membership's error
// otherwise after Close.
func (p *Partitioner) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// View returns the group as the partitioner last acted on it: the view its
// share follows from.
func (p *Partitioner) View() GroupView {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.view
}

// Owned returns the partitions this member owns now, sorted: none once
// its membership (or, in exclusive mode, a partition's lock) was lost,
// even before the partitioner has reported the change.
func (p *Partitioner) Owned() []int {
	if p.m.Err() != nil {
		return []int{}
	}
	p.mu.Lock()
	locks := maps.Clone(p.owned)
	p.mu.Unlock()
	out := make([]int, 0, len(locks))
	for i, l := range locks {
		if l == nil || l.Err() == nil {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

// Lock returns the lock that fences partition i in an exclusive
// partitioner while this member owns it: pass its Token to what you write,
// Fence your transactions with it, and stop when its Done closes. It
// returns nil when the member does not own i (and always in advisory
// mode).
func (p *Partitioner) Lock(i int) *Lock {
	p.mu.Lock()
	l := p.owned[i]
	p.mu.Unlock()
	if l == nil || l.Err() != nil {
		return nil
	}
	return l
}

// Owns reports whether key belongs to this member on the latest view read
// (advisory: see PartitionOptions.Exclusive).
func (p *Partitioner) Owns(key string) bool {
	p.mu.Lock()
	v := p.view
	p.mu.Unlock()
	return v.Ring().Owner(key) == p.m.ID()
}

// Mine returns the keys that belong to this member on the latest view
// read, in their order (tooz's extract_my_subset).
func (p *Partitioner) Mine(keys []string) []string {
	p.mu.Lock()
	v := p.view
	p.mu.Unlock()
	r := v.Ring()
	var out []string
	for _, k := range keys {
		if r.Owner(k) == p.m.ID() {
			out = append(out, k)
		}
	}
	return out
}

// Close gives up every partition, leaves the group and waits for the
// partitioner's goroutine. It is idempotent.
func (p *Partitioner) Close(ctx context.Context) error {
	p.cancel()
	<-p.exited
	return p.m.Leave(ctx)
}

func (p *Partitioner) run(ctx context.Context) {
	defer close(p.exited)
	defer close(p.changes)
	defer p.watch.Close()
	defer p.giveUpAll()
	var pending *GroupView // a view not yet acted on
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	// An exclusive partitioner asks again, every WatchInterval, for the
	// partitions of its share it does not hold yet (their previous owner
	// releases them when it sees the new view, or its lease expires), and
	// notices locks it lost.
	var tick <-chan time.Time
	if p.opts.Exclusive {
		t := time.NewTicker(p.c.cfg.WatchInterval)
		defer t.Stop()
		tick = t.C
	}
	apply := func(v GroupView) {
		p.mu.Lock()
		p.view = v
		p.mu.Unlock()
		if p.opts.Partitions == 0 {
			// Keys only: every new view is a change (see Mine, Owns).
			p.send(ctx, PartitionChange{Generation: v.Generation, View: v, Owned: []int{}})
			return
		}
		p.reconcile(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.m.Done():
			p.mu.Lock()
			p.err = p.m.Err()
			p.mu.Unlock()
			return
		case e, ok := <-p.watch.Events():
			if !ok {
				return
			}
			v := e.View
			if p.opts.Settle == 0 || !p.started() {
				apply(v)
				pending = nil
			} else {
				pending = &v
				settle.Reset(p.opts.Settle)
			}
		case <-settle.C:
			if pending != nil {
				apply(*pending)
				pending = nil
			}
		case <-tick:
			p.reconcile(ctx)
		}
	}
}

func (p *Partitioner) release(l *Lock) {
	ctx, cancel := context.WithTimeout(context.Background(), p.c.cfg.releaseBound())
	defer cancel()
	_ = l.Release(ctx)
}

// started reports whether the initial share has been sent.
func (p *Partitioner) started() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent
}

// share returns the partitions the ring of v gives this member.
func (p *Partitioner) share(v GroupView) map[int]bool {
	r := v.Ring()
	want := map[int]bool{}
	for i := range p.opts.Partitions {
		if r.Owner(strconv.Itoa(i)) == p.m.ID() {
			want[i] = true
		}
	}
	return want
}

// reconcile makes the owned set the share of the latest view: in advisory
// mode the share itself; in exclusive mode the partitions of the share
// whose lock it holds, asking (TryLock) for those it does not. Partitions
// no longer in the share are released first, so that their next owner can
// take them. A change is reported (the first one always).
func (p *Partitioner) reconcile(ctx context.Context) {
	p.mu.Lock()
	v := p.view
	p.mu.Unlock()
	var want map[int]bool
	if ctx.Err() == nil {
		want = p.share(v)
	}
	var added, removed []int
	p.mu.Lock()
	var release []*Lock
	for i, l := range p.owned {
		if !want[i] || (l != nil && l.Err() != nil) {
			delete(p.owned, i)
			removed = append(removed, i)
			if l != nil {
				release = append(release, l)
			}
		}
	}
	var ask []int
	for i := range want {
		if _, ok := p.owned[i]; ok {
			continue
		}
		if p.opts.Exclusive {
			ask = append(ask, i)
		} else {
			p.owned[i] = nil
			added = append(added, i)
		}
	}
	p.mu.Unlock()
	for _, l := range release {
		p.release(l)
	}
	slices.Sort(ask)
	for _, i := range ask {
		name, _ := partitionName(p.group, i)
		l, err := p.c.TryLock(ctx, name, Exclusive, WithPayload(p.m.ID()))
		if err != nil {
			if !errors.Is(err, ErrLocked) && ctx.Err() == nil {
				p.c.logger.Debug("sqldlm: partition: lock failed, asking again later", "group", p.group, "partition", i, "error", err)
			}
			continue
		}
		p.mu.Lock()
		p.owned[i] = l
		p.mu.Unlock()
		added = append(added, i)
	}
	p.mu.Lock()
	owned := make([]int, 0, len(p.owned))
	for i := range p.owned {
		owned = append(owned, i)
	}
	quiet := len(added)+len(removed) == 0 && p.sent
	p.mu.Unlock()
	if quiet {
		return
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(owned)
	p.send(ctx, PartitionChange{Generation: v.Generation, Added: added, Removed: removed, Owned: owned, View: v})
}

// send delivers a change, waiting for the reader until ctx ends; once ctx
// has ended (the partitioner is ending) it only fills the channel's buffer.
func (p *Partitioner) send(ctx context.Context, ch PartitionChange) {
	p.mu.Lock()
	p.sent = true
	p.mu.Unlock()
	select {
	case p.changes <- ch:
	case <-ctx.Done():
		select {
		case p.changes <- ch:
		default:
		}
	}
}

// giveUpAll releases every partition when the partitioner ends.
func (p *Partitioner) giveUpAll() {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	p.reconcile(done) // with ctx ended the share is empty
}
