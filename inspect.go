package sqldlm

import (
	"context"
	"time"
)

// Filter selects the names [Admin.Locks] and [Client.Locks] report. Its zero value selects
// every name that is held or awaited.
type Filter struct {
	// Prefix keeps names that start with these bytes (no wildcards: "node_"
	// matches "node_1", not "nodeX1").
	Prefix string
	// Owner keeps names this owner holds or waits for.
	Owner string
}

// LockInfo is one name's state: who holds it and who waits for it.
type LockInfo struct {
	Name string
	// Mode is Exclusive if a live exclusive hold exists, Shared if only live
	// shared holds do, and 0 if every hold belongs to a dead lease (about to
	// be taken over or reaped).
	Mode Mode
	// Token is the highest fencing token granted for the name.
	Token   int64
	Holders []HolderInfo
	Waiters []WaiterInfo
}

// HolderInfo is one hold of a name. Ages are measured by the database's
// clock.
type HolderInfo struct {
	Owner     string
	LeaseID   int64
	Mode      Mode
	Token     int64
	Since     time.Time     // when it was granted
	HeldFor   time.Duration // how long it has been held
	ExpiresIn time.Duration // until its lease expires unless renewed; negative once expired
	Live      bool          // false: its lease is dead; the hold is about to be taken over or reaped
	Payload   string        // what the holder is doing (see WithPayload)
}

// WaiterInfo is one client waiting for a name.
type WaiterInfo struct {
	Owner    string
	LeaseID  int64
	Mode     Mode
	Upgrade  bool // waiting to upgrade its shared hold
	Since    time.Time
	Waited   time.Duration
	Position int // 1 is next in line
}

// LeaseInfo is one client lease: live, or dead and not yet reaped.
type LeaseInfo struct {
	ID        int64
	Owner     string
	Created   time.Time
	Renewed   time.Time     // last successful renewal
	ExpiresIn time.Duration // negative once expired
	Broken    bool          // ended by a takeover or by an operator (sqldlm break)
	Live      bool
	Holds     int // holds attached to the lease
	Waits     int // requests it has queued
}

// Locks reports the names that are held or awaited, sorted by name, with
// their holders and waiters: see [Admin.Locks].
func (c *Client) Locks(ctx context.Context, f Filter) ([]LockInfo, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	return c.admin().Locks(ctx, f)
}

// Leases reports every client lease in the database, live or dead but not
// yet reaped, sorted by owner: see [Admin.Leases].
func (c *Client) Leases(ctx context.Context) ([]LeaseInfo, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	return c.admin().Leases(ctx)
}

// admin is the Admin of the client's database, which its Locks, Leases and
// AuditLog are.
func (c *Client) admin() *Admin { return &Admin{db: c.db, dialect: c.dialect} }
