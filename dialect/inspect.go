package dialect

import (
	"context"
	"database/sql"
	"time"
)

// Inspector answers operators' questions about the lock tables: who holds
// and who waits (Locks), which leases exist (Leases), and lets an operator
// break a stuck holder's lease (Break). Ages and expiries are computed with
// the server's clock. The migrations also create SQL views with the same
// content (sqldlm_holders_view, sqldlm_waiters_view, sqldlm_leases_view)
// for use from psql or mysql.
type Inspector interface {
	// Locks returns the names that have holds or waiters, sorted by name,
	// with their holds (dead leases' included, flagged) and live waiters in
	// arrival order. Filter.Prefix matches the start of names byte by byte
	// (no wildcards); Filter.Owner keeps the names that owner holds or
	// waits for.
	Locks(ctx context.Context, db *sql.DB, f *LocksFilter) ([]LockState, error)
	// Leases returns every lease row, live or dead but not yet reaped,
	// sorted by owner then id.
	Leases(ctx context.Context, db *sql.DB) ([]LeaseState, error)
	// Break marks broken (dead at once) every live lease that holds name,
	// or only those of owner when owner is not empty, and wakes the name's
	// waiters. The leases' holders learn of it at their next renewal or
	// Fence; waiters take the name over. It returns the leases it broke.
	Break(ctx context.Context, db *sql.DB, name, owner string) ([]LeaseState, error)
}

// LocksFilter selects names for [Inspector.Locks].
type LocksFilter struct {
	Prefix string // names starting with these bytes; "" for all
	Owner  string // names this owner holds or waits for; "" for all
}

// LockState is one name's holds and waiters.
type LockState struct {
	Name    string
	Token   int64 // the highest token granted for the name (0 if unknown)
	Holders []HolderState
	Waiters []WaiterState
}

// HolderState is one hold.
type HolderState struct {
	Owner     string
	LeaseID   int64
	Mode      Mode
	Token     int64
	Since     time.Time     // when it was granted (server clock)
	HeldFor   time.Duration // server now - Since
	ExpiresIn time.Duration // until its lease expires unless renewed; negative if expired
	Live      bool          // its lease is live
	Payload   string
}

// WaiterState is one live waiter.
type WaiterState struct {
	Owner    string
	LeaseID  int64
	Mode     Mode
	Upgrade  bool          // an upgrade of a shared hold
	Since    time.Time     // when it started waiting (server clock)
	Waited   time.Duration // server now - Since
	Position int           // 1 for the first in line
}

// LeaseState is one lease row.
type LeaseState struct {
	ID        int64
	Owner     string
	Created   time.Time
	Renewed   time.Time
	ExpiresIn time.Duration // negative if expired
	Broken    bool          // broken by a takeover or an operator
	Live      bool
	Holds     int
	Waits     int
}
