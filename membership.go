package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/ring"
)

// MetaMaxBytes is the longest member meta accepted.
const MetaMaxBytes = 8192

var (
	// ErrMemberExists is returned by [Client.Join] when the group has a
	// live member of that id (another client's, or another membership of
	// this client). The error is a *MemberExistsError that says whose.
	ErrMemberExists = errors.New("sqldlm: member id in use")

	// ErrLeft is returned by [Membership.Err] after [Membership.Leave].
	ErrLeft = errors.New("sqldlm: left the group")

	// ErrInvalidMember is returned for a group name, member id, meta or
	// weight that cannot be stored; the message says which and why.
	ErrInvalidMember = errors.New("sqldlm: invalid membership")
)

// MemberExistsError is the error of a [Client.Join] whose member id is in
// use by a live member. It wraps ErrMemberExists.
type MemberExistsError struct {
	Group, ID string
	// Owner is the live member's client (its Config.Owner).
	Owner       string
	Incarnation int64
	// ExpiresIn is how long, by the database's clock, until that member's
	// lease expires unless it is renewed.
	ExpiresIn time.Duration
}

func (e *MemberExistsError) Error() string {
	return fmt.Sprintf("sqldlm: %q is already a member of %q (owner %s, incarnation %d, lease expires in %s unless renewed)",
		e.ID, e.Group, e.Owner, e.Incarnation, e.ExpiresIn.Round(time.Millisecond))
}

func (e *MemberExistsError) Unwrap() error { return ErrMemberExists }

// MemberInfo is one live member of a group.
type MemberInfo struct {
	ID          string
	Owner       string // the member's client (its Config.Owner)
	Meta        string
	Incarnation int64 // a rejoin of the same id has a higher one
	Weight      float64
	Joined      time.Time
	// ExpiresIn is how long, by the database's clock at the read, until the
	// member's lease expires unless it is renewed.
	ExpiresIn time.Duration
}

// GroupView is a group's live members, by one consistent read at one
// instant of the database's clock.
type GroupView struct {
	Group string
	// Generation changes with every join, leave, meta update and expiry in
	// the group, and never goes back: of two views, the one with the higher
	// generation is the later.
	Generation int64
	Members    []MemberInfo // sorted by ID
}

// Member returns the member of the view with id.
func (v GroupView) Member(id string) (MemberInfo, bool) {
	for _, m := range v.Members {
		if m.ID == id {
			return m, true
		}
	}
	return MemberInfo{}, false
}

// Ring returns the view's members as a hash ring, weights included.
// Members with the same view build the same ring.
func (v GroupView) Ring() *ring.Ring {
	nodes := make([]ring.Node, len(v.Members))
	for i, m := range v.Members {
		nodes[i] = ring.Node{ID: m.ID, Weight: m.Weight}
	}
	return ring.New(nodes)
}

// JoinOption sets an option of a [Client.Join].
type JoinOption func(*joinOptions)

type joinOptions struct {
	meta   string
	weight float64
}

// WithMeta stores a text with the membership (JSON, an address: at most
// MetaMaxBytes of UTF-8), shown to every reader of the group. Change it
// with [Membership.SetMeta].
func WithMeta(meta string) JoinOption { return func(o *joinOptions) { o.meta = meta } }

// WithWeight sets the member's weight in [GroupView.Ring]: a member of
// weight 2 owns about twice the keys of one of weight 1. Defaults to 1.
func WithWeight(w float64) JoinOption { return func(o *joinOptions) { o.weight = w } }

// validateGroupText checks a group name or member id.
func validateGroupText(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: the %s is empty", ErrInvalidMember, what)
	case len(s) > NameMaxBytes:
		return fmt.Errorf("%w: the %s is %d bytes long, over the limit of %d", ErrInvalidMember, what, len(s), NameMaxBytes)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: the %s %q is not valid UTF-8", ErrInvalidMember, what, s)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Errorf("%w: the %s %q contains a NUL byte", ErrInvalidMember, what, s)
	}
	return nil
}

func validateMeta(meta string) error {
	switch {
	case len(meta) > MetaMaxBytes:
		return fmt.Errorf("%w: the meta is %d bytes, over the limit of %d", ErrInvalidMember, len(meta), MetaMaxBytes)
	case !utf8.ValidString(meta):
		return fmt.Errorf("%w: the meta is not valid UTF-8", ErrInvalidMember)
	case strings.IndexByte(meta, 0) >= 0:
		return fmt.Errorf("%w: the meta contains a NUL byte", ErrInvalidMember)
	}
	return nil
}

// Membership is a client's membership of a group. It lasts until Leave,
// the loss of the client's lease, or Client.Close; it is not renewed on
// its own (the client's lease heartbeat keeps it). A membership that ended
// is not revived: Join again, which gives a higher incarnation.
type Membership struct {
	c           *Client
	l           *lease
	ref         dialect.MemberRef
	incarnation int64

	mu   sync.Mutex
	err  error
	done chan struct{}
}

// Join makes the client a member of group as id, for as long as its lease
// lives. It returns a *MemberExistsError (ErrMemberExists) when a live
// member of the group already has that id; a member whose client died is
// gone once its lease has expired by the database's clock, and its id is
// free again. Ids are compared byte by byte.
//
// If the database cannot be reached Join fails (an error matching
// dialect.ErrConnection, or ctx's error); a membership its statement may
// have made all the same is withdrawn before Join returns, or in the
// background if the database does not answer the withdrawal at once. A
// Join of the same id tried again while that withdrawal is still pending
// runs it first, so the client's own abandoned request is never the member
// it is refused for.
func (c *Client) Join(ctx context.Context, group, id string, opts ...JoinOption) (*Membership, error) {
	o := joinOptions{weight: 1}
	for _, opt := range opts {
		opt(&o)
	}
	if err := validateGroupText("group name", group); err != nil {
		return nil, err
	}
	if err := validateGroupText("member id", id); err != nil {
		return nil, err
	}
	if err := validateMeta(o.meta); err != nil {
		return nil, err
	}
	if !(o.weight > 0) || math.IsInf(o.weight, 0) {
		return nil, fmt.Errorf("%w: the weight %v is not a positive finite number", ErrInvalidMember, o.weight)
	}
	g := c.dialect
	// A lease found dead by the database is replaced once: the client
	// learns of it here before its heartbeat does. The client's own earlier
	// join request, in the way because its withdrawal was left to the
	// background, is withdrawn at once, and the join asked again, once.
	ownWithdrawn := false
	for attempt := 0; ; attempt++ {
		l, err := c.currentLease(ctx)
		if err != nil {
			return nil, fmt.Errorf("sqldlm: join %q as %q: %w", group, id, err)
		}
		ref := dialect.MemberRef{Group: group, ID: id, LeaseID: l.id, RequestID: rand.Int64()}
		res, err := retryStatement(ctx, func() (*dialect.JoinResult, error) {
			return g.Join(ctx, c.db, &dialect.JoinParams{
				Group: group, ID: id, LeaseID: l.id, RequestID: ref.RequestID, Meta: o.meta, Weight: o.weight,
			})
		})
		if err != nil {
			// The outcome is unknown: withdraw whatever the statement did.
			c.withdrawJoin(l, ref)
			if ctxErr := ctx.Err(); ctxErr != nil {
				err = ctxErr
			}
			return nil, fmt.Errorf("sqldlm: join %q as %q: %w", group, id, err)
		}
		switch res.Status {
		case dialect.Joined:
			m := &Membership{c: c, l: l, ref: ref, incarnation: res.Incarnation, done: make(chan struct{})}
			if !l.addMember(m) {
				// The lease ended (or its deadline passed) meanwhile.
				c.withdrawJoin(l, ref)
				return nil, fmt.Errorf("sqldlm: join %q as %q: the lease was lost during the join: %w", group, id, ErrLost)
			}
			c.logger.Debug("sqldlm: joined", "group", group, "member", id, "incarnation", res.Incarnation)
			c.hooks.MemberJoined(group)
			return m, nil
		case dialect.MemberTaken:
			h := res.Holder
			if h.LeaseID == l.id && !ownWithdrawn && c.janitor.leaveNow(ctx, l.id, group, id) {
				ownWithdrawn = true
				attempt--
				continue
			}
			return nil, &MemberExistsError{Group: group, ID: id, Owner: h.Owner, Incarnation: h.Incarnation, ExpiresIn: h.ExpiresIn}
		case dialect.JoinLeaseNotLive:
			l.end(ErrLost, "the database found the lease dead at a join")
			if attempt == 0 {
				continue
			}
			return nil, fmt.Errorf("sqldlm: join %q as %q: the client's lease was lost: %w", group, id, ErrLost)
		default:
			return nil, fmt.Errorf("sqldlm: join %q as %q: unexpected outcome %d", group, id, res.Status)
		}
	}
}

// withdrawJoin withdraws a join request whose outcome the caller will not
// learn (deleting the membership it may have made, and recording it
// withdrawn so that its statement, however late, joins nothing), as a lock
// request is withdrawn (Client.abandon): a Join tried again at once must
// not find the client's own abandoned request in the way (ErrMemberExists).
func (c *Client) withdrawJoin(l *lease, ref dialect.MemberRef) {
	c.withdrawNow(l, func(ctx context.Context) error {
		_, err := c.dialect.Leave(ctx, c.db, &ref)
		return err
	}, func(err error) {
		c.logger.Debug("sqldlm: withdrawing a join failed, retrying in the background", "group", ref.Group, "member", ref.ID, "error", err)
		c.janitor.leave(l, ref)
	})
}

// Group returns the group's name.
func (m *Membership) Group() string { return m.ref.Group }

// ID returns the member's id in the group.
func (m *Membership) ID() string { return m.ref.ID }

// Incarnation returns the membership's incarnation: the group's generation
// right after the join. A later join of the same id has a higher one, so
// peers can tell a member that left and came back from one that stayed.
func (m *Membership) Incarnation() int64 { return m.incarnation }

// Done is closed when the membership ends: left, lost or the client closed.
func (m *Membership) Done() <-chan struct{} { return m.done }

// Err is nil while the client is a member. After Done closed it is ErrLost
// when the client's lease was lost (Done closes before any peer can see
// the member gone), ErrLeft after Leave and ErrClosed after Client.Close.
//
// Like [Lock.Err], it checks the lease's trust deadline itself.
func (m *Membership) Err() error {
	m.mu.Lock()
	err := m.err
	m.mu.Unlock()
	if err == nil && m.l.endIfOverdue() {
		m.mu.Lock()
		err = m.err
		m.mu.Unlock()
	}
	return err
}

// finish ends the membership once with err and reports whether this call
// ended it.
func (m *Membership) finish(err error) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return false
	}
	m.err = err
	close(m.done)
	return true
}

// end ends the membership with err (see finish) and reports it to the
// hooks; it reports whether this call ended it.
func (m *Membership) end(err error) bool {
	if !m.finish(err) {
		return false
	}
	m.c.hooks.MemberLeft(m.ref.Group, err)
	return true
}

// SetMeta replaces the member's meta; readers of the group see the change
// with a new generation. It returns ErrLost (and ends the membership) if
// the membership was lost, and the error of Err after it ended.
func (m *Membership) SetMeta(ctx context.Context, meta string) error {
	if err := validateMeta(meta); err != nil {
		return err
	}
	if err := m.Err(); err != nil {
		return err
	}
	g := m.c.dialect
	ok, err := retryStatement(ctx, func() (bool, error) { return g.SetMeta(ctx, m.c.db, &m.ref, meta) })
	if err != nil {
		return fmt.Errorf("sqldlm: set meta of %q in %q: %w", m.ref.ID, m.ref.Group, err)
	}
	if !ok {
		// The member row is gone or its lease is not live: only the lease's
		// death removes it while the membership is open.
		if m.end(ErrLost) {
			m.l.removeMember(m)
			m.c.logger.Info("sqldlm: membership lost", "group", m.ref.Group, "member", m.ref.ID)
		}
		return m.Err()
	}
	return nil
}

// Leave ends the membership: Done closes at once, then the member is
// deleted, and readers of the group see it gone with a new generation. It
// is idempotent and cannot fail the caller: if the database cannot be
// reached it retries in the background, and the lease's expiry ends the
// membership at the latest. It returns ErrLost if the membership had been
// lost before.
func (m *Membership) Leave(ctx context.Context) error {
	if !m.end(ErrLeft) {
		if err := m.Err(); errors.Is(err, ErrLost) {
			return err
		}
		return nil
	}
	m.l.removeMember(m)
	g := m.c.dialect
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.c.cfg.releaseBound())
	defer cancel()
	if _, err := retryStatement(ctx, func() (bool, error) { return g.Leave(ctx, m.c.db, &m.ref) }); err != nil {
		m.c.logger.Debug("sqldlm: leave failed, retrying in the background", "group", m.ref.Group, "member", m.ref.ID, "error", err)
		m.c.janitor.leave(m.l, m.ref)
	}
	return nil
}

// Members reads group's live members by one consistent read at one
// instant of the database's clock: see [Admin.Members].
func (c *Client) Members(ctx context.Context, group string) (GroupView, error) {
	if c.isClosed() {
		return GroupView{}, ErrClosed
	}
	return c.admin().Members(ctx, group)
}

// Members reads group's live members by one consistent read at one
// instant of the database's clock. A group nobody joined is empty, with
// generation 0 (on PostgreSQL, its failover epoch times 2^32). The same
// is in the SQL view sqldlm_members_view.
func (a *Admin) Members(ctx context.Context, group string) (GroupView, error) {
	if err := validateGroupText("group name", group); err != nil {
		return GroupView{}, err
	}
	st, err := readGroup(ctx, a.dialect, a.db, group)
	if err != nil {
		return GroupView{}, fmt.Errorf("sqldlm: members of %q: %w", group, err)
	}
	return viewOf(group, st), nil
}

// readGroup reads a group. A read that finds a member whose lease has
// expired but is not broken yet sweeps the group first and reads again:
// only a sweep, which re-checks each expiry after the lease row's lock,
// may count a member gone (a renewal that ran before the expiry may not
// have committed yet). If the sweep fails (a role without write access),
// the first read stands: its expired members are still in it, with a
// negative ExpiresIn.
func readGroup(ctx context.Context, g dialect.Grouper, db *sql.DB, group string) (*dialect.GroupState, error) {
	st, err := g.Members(ctx, db, group)
	if err != nil || !slices.ContainsFunc(st.Members, func(m dialect.MemberState) bool { return m.Expired }) {
		return st, err
	}
	if _, err := g.Sweep(ctx, db, group); err != nil {
		return st, nil
	}
	return g.Members(ctx, db, group)
}

// readGeneration is readGroup for the generation alone (a watcher's poll).
func readGeneration(ctx context.Context, g dialect.Grouper, db *sql.DB, group string) (int64, error) {
	n, expired, err := g.Generation(ctx, db, group)
	if err != nil || expired == 0 {
		return n, err
	}
	if _, err := g.Sweep(ctx, db, group); err != nil {
		return n, nil
	}
	n, _, err = g.Generation(ctx, db, group)
	return n, err
}

func viewOf(group string, st *dialect.GroupState) GroupView {
	v := GroupView{Group: group, Generation: st.Generation, Members: make([]MemberInfo, len(st.Members))}
	for i, m := range st.Members {
		v.Members[i] = MemberInfo{
			ID: m.ID, Owner: m.Owner, Meta: m.Meta, Incarnation: m.Incarnation, Weight: m.Weight,
			Joined: m.Joined, ExpiresIn: m.ExpiresIn,
		}
	}
	return v
}
