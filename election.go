package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ElectionPrefix starts the lock name of every election: the election
// "scheduler" is the exclusive lock "sqldlm:election:scheduler", its leader
// that lock's holder, the leader's value the hold's payload and the term
// its fencing token. Elections therefore show in [Client.Locks], `sqldlm
// locks` and sqldlm_holders_view, and a client in another language
// campaigns by acquiring that name with the lock routines.
const ElectionPrefix = "sqldlm:election:"

// ErrNoLeader is returned by [Client.Leader] when the election has no
// live leader: nobody won it yet, the leader resigned, or its lease expired
// and nobody has been elected since.
var ErrNoLeader = errors.New("sqldlm: no leader")

// LeaderInfo describes an election's leader. The zero value means "no
// leader" (see [Client.ObserveLeader]).
type LeaderInfo struct {
	Owner string // the leading client's Config.Owner
	Value string // what the leader proclaimed (Campaign's value, or Proclaim's)
	Term  int64  // the leadership's term, strictly increasing per election
	Since time.Time
}

// Leadership is a won election: the client leads until it resigns, its
// lease is lost, or it closes. Like a [Lock], it is the holder that learns
// first: Done closes and Err returns ErrLost before any other campaigner
// can be elected.
type Leadership struct {
	election string
	l        *Lock
}

// electionName returns the lock name of an election, or an error naming
// what is wrong with election.
func electionName(election string) (string, error) {
	if election == "" {
		return "", fmt.Errorf("%w: the election name is empty", ErrInvalidName)
	}
	name := ElectionPrefix + election
	if err := ValidateName(name); err != nil {
		return "", fmt.Errorf("election %q (lock name %q, at most %d bytes): %w", election, name, NameMaxBytes, err)
	}
	return name, nil
}

// Campaign blocks until the client is elected leader of election, or ctx
// ends (ctx's error; a *WaitError that says who leads), or the client
// closes (ErrClosed). Campaigners are elected in the order they began to
// campaign. value is published with the leadership (an address, an ID; at
// most 1024 bytes) and read with [Client.Leader].
//
// At most one client leads an election at any instant of the database's
// clock. Campaign returns only a leadership whose lease is live and
// trusted: never "elected" on a lease that has already ended.
func (c *Client) Campaign(ctx context.Context, election, value string) (*Leadership, error) {
	name, err := electionName(election)
	if err != nil {
		return nil, err
	}
	if err := ValidatePayload(value); err != nil {
		return nil, fmt.Errorf("sqldlm: campaign %q: value: %w", election, err)
	}
	l, err := c.acquire(ctx, name, electionMode(), true, []LockOption{WithPayload(value)})
	if err != nil {
		return nil, opError("campaign", election, err)
	}
	c.hooks.Elected(election, l.Token())
	return &Leadership{election: election, l: l}, nil
}

// Election returns the election's name.
func (ld *Leadership) Election() string { return ld.election }

// Term returns the leadership's term: a fencing token, strictly greater
// than every earlier term of the election. Pass it to whatever the leader
// writes to, which refuses lower terms than it has seen.
func (ld *Leadership) Term() int64 { return ld.l.Token() }

// Value returns the value last proclaimed.
func (ld *Leadership) Value() string { return ld.l.Payload() }

// Done is closed when the leadership ends: resigned, lost, or the client
// closed.
func (ld *Leadership) Done() <-chan struct{} { return ld.l.Done() }

// Err is nil while the client leads. After Done closed it is ErrLost when
// the leadership was lost (the lease expired or was broken: another
// campaigner may now lead) and ErrReleased after Resign or Client.Close.
func (ld *Leadership) Err() error { return ld.l.Err() }

// Fence checks, inside the caller's transaction tx, that the client still
// leads with this term, and keeps any other campaigner from being elected
// until tx ends, as [Lock.Fence] does. A deposed leader's Fence fails with
// ErrLost, so its writes roll back.
func (ld *Leadership) Fence(ctx context.Context, tx *sql.Tx) error { return ld.l.Fence(ctx, tx) }

// Proclaim publishes a new value without giving up the leadership. It
// returns ErrLost if the leadership was lost.
func (ld *Leadership) Proclaim(ctx context.Context, value string) error {
	if err := ValidatePayload(value); err != nil {
		return fmt.Errorf("sqldlm: proclaim in %q: %w", ld.election, err)
	}
	return ld.l.SetPayload(ctx, value)
}

// Resign gives up the leadership; the next campaigner is elected. It is
// idempotent and, like [Lock.Release], cannot fail the caller: if the
// database cannot be reached it retries in the background and the lease's
// expiry ends the leadership at the latest. It returns ErrLost if the
// leadership had been lost before.
func (ld *Leadership) Resign(ctx context.Context) error { return ld.l.Release(ctx) }

// Lead is the loop a service runs for a singleton role: campaign for
// election, run fn while elected, and campaign again after fn returns or
// the leadership is lost, until ctx ends. fn's ctx is cancelled as soon as
// the leadership ends (cause ErrLost) or ctx does; term is the
// leadership's fencing token. fn is never called without a live
// leadership, and no "stopped leading" step runs for a campaign that was
// never won.
//
// When fn returns a non-nil error while still leading, Lead resigns and
// returns that error. Otherwise (nil, or any error after the leadership
// was lost) Lead resigns if it still leads and campaigns again. Failures
// to reach the database are waited out as [Client.Lock] does. Lead returns
// ctx's error when ctx ends, and ErrClosed when the client closes.
func (c *Client) Lead(ctx context.Context, election, value string, fn func(ctx context.Context, term int64) error) error {
	for {
		ld, err := c.Campaign(ctx, election, value)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			return err
		}
		fnErr := ld.run(ctx, fn)
		lost := ld.Err() != nil
		relErr := ld.Resign(context.WithoutCancel(ctx))
		if fnErr != nil && !lost && !errors.Is(relErr, ErrLost) {
			return fnErr
		}
		if fnErr != nil {
			c.logger.Info("sqldlm: leadership lost while the leader ran", "election", election, "term", ld.Term(), "error", fnErr)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// run calls fn with a ctx that is cancelled when the leadership ends.
func (ld *Leadership) run(ctx context.Context, fn func(ctx context.Context, term int64) error) error {
	return ld.l.whileHeld(ctx, func(ctx context.Context) error { return fn(ctx, ld.Term()) })
}

// Leader returns the election's current leader by the database's clock:
// the live holder of its lock. It returns ErrNoLeader when there is none
// (a leader whose lease has expired is no leader, even before anyone
// replaces it). It is a plain read: a leader whose renewal ran just
// before its expiry but commits just after can read as no leader for that
// instant, and as leader again, with the same term, once it has
// committed. Only Campaign decides (after the lease row's lock).
func (c *Client) Leader(ctx context.Context, election string) (LeaderInfo, error) {
	name, err := electionName(election)
	if err != nil {
		return LeaderInfo{}, err
	}
	if c.isClosed() {
		return LeaderInfo{}, ErrClosed
	}
	return leaderOf(ctx, c.admin(), name)
}

// Leader returns the election's current leader, as [Client.Leader] does.
func (a *Admin) Leader(ctx context.Context, election string) (LeaderInfo, error) {
	name, err := electionName(election)
	if err != nil {
		return LeaderInfo{}, err
	}
	return leaderOf(ctx, a, name)
}

func leaderOf(ctx context.Context, a *Admin, name string) (LeaderInfo, error) {
	infos, err := a.Locks(ctx, Filter{Prefix: name})
	if err != nil {
		return LeaderInfo{}, err
	}
	for _, info := range infos {
		if info.Name != name {
			continue
		}
		for _, h := range info.Holders {
			if h.Live && h.Mode == Exclusive {
				return LeaderInfo{Owner: h.Owner, Value: h.Payload, Term: h.Token, Since: h.Since}, nil
			}
		}
	}
	return LeaderInfo{}, ErrNoLeader
}

// ObserveLeader reports the election's leader on the returned channel
// whenever it changes: a new term, a new value, or no leader (the zero
// LeaderInfo), starting with the current state. A slow reader sees only
// the latest state, never a stale one after a newer. The channel is closed
// when ctx ends or the client closes. The election is read about every
// Config.WatchInterval (and, when a change may have been missed, at once).
func (c *Client) ObserveLeader(ctx context.Context, election string) (<-chan LeaderInfo, error) {
	name, err := electionName(election)
	if err != nil {
		return nil, err
	}
	if c.isClosed() {
		return nil, ErrClosed
	}
	ch := make(chan LeaderInfo, 1)
	if !c.goStart(func() { c.observeLeader(ctx, name, ch) }) {
		return nil, ErrClosed
	}
	return ch, nil
}

func (c *Client) observeLeader(ctx context.Context, name string, ch chan LeaderInfo) {
	defer close(ch)
	wake, unregister := c.waiters.observe(name)
	defer unregister()
	var last LeaderInfo
	first := true
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.closed:
			return
		case <-wake:
		case <-t.C:
		}
		cur, err := leaderOf(ctx, c.admin(), name)
		switch {
		case errors.Is(err, ErrNoLeader):
			cur = LeaderInfo{}
			err = nil
		case err != nil && ctx.Err() == nil:
			c.logger.Debug("sqldlm: observe leader: read failed, retrying", "lock_name", name, "error", err)
		}
		if err == nil && (first || cur != last) {
			first = false
			last = cur
			// Keep only the latest state in the buffer.
			select {
			case <-ch:
			default:
			}
			ch <- cur
		}
		t.Reset(c.cfg.WatchInterval)
	}
}
