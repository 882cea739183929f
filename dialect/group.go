package dialect

import (
	"context"
	"database/sql"
	"time"
)

// Grouper is the storage side of sqldlm's group membership. A member is a
// row (group, member id) that hangs off a lease: it is live exactly while
// its lease is live (by the server's clock), so members add no heartbeat
// of their own. Every method is one transaction at READ COMMITTED.
//
// The semantics, which every dialect must implement exactly and which
// dialecttest checks:
//
//   - Every group has a generation. Join, Leave and SetMeta that change a
//     member add one to the group's stored generation, in the same
//     transaction as the change. A member whose lease is broken or gone
//     counts one more: the generation a read reports is the stored one plus
//     the number of member rows whose lease is broken or gone. A writing
//     operation (and Sweep) first sweeps the group: it marks broken the
//     expired leases of its members (re-checking the expiry after the lease
//     row's lock, so that a renewal in flight wins) and deletes the member
//     rows of leases that are broken or gone, adding their number to the
//     stored generation. A plain read never decides an expiry by the clock
//     alone (a renewal that ran before the expiry may not have committed,
//     and a member counted gone must stay gone): it reports members whose
//     lease has expired unbroken (Expired), and the caller sweeps. So the
//     generation never goes back and changes with every join, leave,
//     update and expiry.
//   - A member's incarnation is the group's generation right after its
//     join: a rejoin always has a higher one.
//   - One member id per group: a Join finds a live member of that id
//     (another lease, or another request of the same lease) and returns it
//     as the holder instead of joining.
//   - A request is identified by (lease, request id). Repeating a Join
//     after an unknown outcome returns the membership it already made. A
//     Leave records the request as withdrawn: no Join statement of it that
//     runs later, however late it arrives, joins (JoinWithdrawn).
//   - A member is live while its lease is; on PostgreSQL also while grants
//     are frozen after a failover (the expiry recorded on a new primary may
//     be older than the one the member's client trusts), until the freeze
//     ends.
type Grouper interface {
	// Join makes the lease a member of p.Group as p.ID.
	Join(ctx context.Context, db *sql.DB, p *JoinParams) (*JoinResult, error)
	// Leave deletes the membership of request (lease, request id) and
	// records the request as withdrawn. It returns whether a member row
	// was deleted.
	Leave(ctx context.Context, db *sql.DB, m *MemberRef) (bool, error)
	// SetMeta replaces a live membership's meta. It returns false if the
	// membership does not exist or its lease is not live.
	SetMeta(ctx context.Context, db *sql.DB, m *MemberRef, meta string) (bool, error)
	// Members reads the group's members whose lease is there and not
	// broken, sorted by id, with the group's generation, in one consistent
	// read. A group nobody joined has generation 0 and no members.
	Members(ctx context.Context, db *sql.DB, group string) (*GroupState, error)
	// Generation reads only the group's generation (a watcher's poll), and
	// how many of its members' leases have expired unbroken (to sweep).
	Generation(ctx context.Context, db *sql.DB, group string) (gen int64, expired int, err error)
	// Sweep sweeps the group (see above) and returns its generation.
	Sweep(ctx context.Context, db *sql.DB, group string) (int64, error)
}

// JoinParams is a request to join a group.
type JoinParams struct {
	Group     string
	ID        string // the member's id in the group
	LeaseID   int64
	RequestID int64
	Meta      string
	Weight    float64
}

// MemberRef names one membership: the request (lease, request id) that
// joined as ID.
type MemberRef struct {
	Group     string
	ID        string
	LeaseID   int64
	RequestID int64
}

// JoinStatus is the outcome of a Join.
type JoinStatus int

// Join outcomes.
const (
	// Joined: the lease is a member (now, or already by this request).
	Joined JoinStatus = iota
	// MemberTaken: a live member of that id exists (JoinResult.Holder).
	MemberTaken
	// JoinLeaseNotLive: the joining lease is not live.
	JoinLeaseNotLive
	// JoinWithdrawn: the request was withdrawn by a Leave.
	JoinWithdrawn
)

// JoinResult is the outcome of a Join.
type JoinResult struct {
	Status JoinStatus
	// Incarnation of the membership (Joined).
	Incarnation int64
	// Generation is the group's generation after the operation.
	Generation int64
	// Holder is the live member of the id (MemberTaken).
	Holder *MemberState
}

// MemberState is one live member as the database sees it.
type MemberState struct {
	ID          string
	Owner       string // the lease's owner
	LeaseID     int64
	RequestID   int64
	Incarnation int64
	Meta        string
	Weight      float64
	Joined      time.Time
	// ExpiresIn is how long until the lease expires unless renewed, by the
	// server's clock at the read.
	ExpiresIn time.Duration
	// Expired: the lease has expired by the server's clock at the read, but
	// no sweep has ended it yet.
	Expired bool
}

// GroupState is a group's live members with its generation.
type GroupState struct {
	Generation int64
	Members    []MemberState
}
