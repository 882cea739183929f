package sqldlm

import (
	"context"
	"time"
)

// AuditFilter selects rows of the audit log. Its zero value selects all.
type AuditFilter struct {
	Name  string        // one name; "" for every name
	Since time.Duration // rows written within this long before the database's now; 0 for all
	Limit int           // only the newest Limit rows, if > 0
}

// AuditEntry is one row of the audit log: a change to one hold.
type AuditEntry struct {
	ID int64     // increases in the order rows were written
	At time.Time // the database's clock, UTC
	// Event is what happened to the hold:
	//   - "grant": granted (Lock, TryLock, TryLockTx).
	//   - "upgrade": the new exclusive hold of an upgrade; Detail names the
	//     shared hold's token.
	//   - "downgrade": made shared.
	//   - "release": released by its holder (Detail "abandoned" for a request
	//     withdrawn as it was granted, "lease closed" for Client.Close).
	//   - "takeover": the hold of a dead holder, deleted by a grant to
	//     another ("by <owner>" in Detail; the grant's row follows).
	//   - "expire": the hold of a dead holder, deleted by the reaper.
	//   - "break": its lease was broken by an operator (Detail "with <name>"
	//     for holds of names other than the one broken).
	Event   string
	Name    string
	Owner   string // the hold's owner (for takeover and expire, the dead holder)
	LeaseID int64
	Token   int64
	Mode    Mode
	Payload string
	Detail  string
}

// AuditLog returns the audit log rows f selects, oldest first: see
// [Admin.AuditLog].
func (c *Client) AuditLog(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	return c.admin().AuditLog(ctx, f)
}
