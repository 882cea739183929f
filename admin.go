package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// AdminConfig configures an [Admin].
type AdminConfig struct {
	// Dialect is the database's dialect. Leave it nil to detect it from
	// db's driver, as [Config].Dialect is.
	Dialect dialect.Dialect
}

// Admin is an operator's handle on sqldlm's tables in one database: who
// holds and who waits ([Admin.Locks]), which leases exist
// ([Admin.Leases]), breaking a stuck holder's lease ([Admin.Break]), and
// the audit log with its schema-wide setting ([Admin.AuditLog],
// [Admin.AuditSettings], [Admin.SetAudit]). It is what the sqldlm command
// line uses.
//
// An Admin holds no lease, starts no goroutine and has nothing to close: it
// is a *sql.DB and a dialect, safe for concurrent use. A [Client]'s Locks,
// Leases and AuditLog are those of an Admin on the client's database.
type Admin struct {
	db      *sql.DB
	dialect dialect.Dialect
}

// NewAdmin returns an Admin for db. It does not touch the database: on a
// database that was never migrated its methods fail with an error matching
// dialect.ErrUndefinedTable. NewAdmin never closes db.
func NewAdmin(db *sql.DB, cfg AdminConfig) (*Admin, error) {
	if db == nil {
		return nil, errors.New("sqldlm: NewAdmin needs a *sql.DB, got nil")
	}
	d, err := resolveDialect(db, cfg.Dialect)
	if err != nil {
		return nil, err
	}
	return &Admin{db: db, dialect: d}, nil
}

// Locks reports the names that are held or awaited, sorted by name, with
// their holders and waiters. Ages and expiries come from the database's
// clock. The same information is in the SQL views sqldlm_holders_view and
// sqldlm_waiters_view.
func (a *Admin) Locks(ctx context.Context, f Filter) ([]LockInfo, error) {
	states, err := a.dialect.Locks(ctx, a.db, &dialect.LocksFilter{Prefix: f.Prefix, Owner: f.Owner})
	if err != nil {
		return nil, fmt.Errorf("sqldlm: list locks: %w", err)
	}
	out := make([]LockInfo, 0, len(states))
	for _, s := range states {
		li := LockInfo{Name: s.Name, Token: s.Token}
		for _, h := range s.Holders {
			mode := modeOf(h.Mode)
			li.Holders = append(li.Holders, HolderInfo{Owner: h.Owner, LeaseID: h.LeaseID, Mode: mode, Token: h.Token,
				Since: h.Since, HeldFor: h.HeldFor, ExpiresIn: h.ExpiresIn, Live: h.Live, Payload: h.Payload})
			if h.Live && mode > li.Mode {
				li.Mode = mode
			}
		}
		for _, w := range s.Waiters {
			li.Waiters = append(li.Waiters, WaiterInfo{Owner: w.Owner, LeaseID: w.LeaseID, Mode: modeOf(w.Mode), Upgrade: w.Upgrade,
				Since: w.Since, Waited: w.Waited, Position: w.Position})
		}
		out = append(out, li)
	}
	return out, nil
}

// Leases reports every client lease in the database, live or dead but not
// yet reaped, sorted by owner. The same information is in the SQL view
// sqldlm_leases_view.
func (a *Admin) Leases(ctx context.Context) ([]LeaseInfo, error) {
	states, err := a.dialect.Leases(ctx, a.db)
	if err != nil {
		return nil, fmt.Errorf("sqldlm: list leases: %w", err)
	}
	return leaseInfos(states), nil
}

func leaseInfos(states []dialect.LeaseState) []LeaseInfo {
	out := make([]LeaseInfo, 0, len(states))
	for _, s := range states {
		out = append(out, LeaseInfo(s))
	}
	return out
}

// Break is an operator's forced release of a stuck holder: it marks broken
// (dead at once) every live lease that holds name, or only those of owner
// when owner is not empty, and returns them. A broken lease loses every
// lock it holds, not only name: its holders learn it at their next renewal,
// their Fence calls fail with ErrLost, and waiters take the names over.
// Breaking a name nobody holds returns no leases and no error.
//
// If it fails part way it returns the leases it did break with the error;
// running it again is safe. An invalid name is refused with an error
// wrapping ErrInvalidName.
func (a *Admin) Break(ctx context.Context, name, owner string) ([]LeaseInfo, error) {
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("sqldlm: break: %w", err)
	}
	broken, err := a.dialect.Break(ctx, a.db, name, owner)
	if err != nil {
		err = fmt.Errorf("sqldlm: break %q: %w", name, err)
	}
	return leaseInfos(broken), err
}

// AuditSettings is the schema-wide setting of the audit log: whether it is
// written, and how long the reaper keeps its rows.
type AuditSettings struct {
	Enabled bool
	// Retention: the reaper deletes audit rows older than this. At least 1s.
	Retention time.Duration
}

// AuditSettings reads the audit log's setting. The migrations create it
// off, with a retention of 7 days.
func (a *Admin) AuditSettings(ctx context.Context) (AuditSettings, error) {
	s, err := a.dialect.AuditSettings(ctx, a.db)
	if err != nil {
		return AuditSettings{}, fmt.Errorf("sqldlm: read the audit setting: %w", err)
	}
	return AuditSettings{Enabled: s.Enabled, Retention: s.Retention}, nil
}

// SetAudit changes the audit log's setting for the whole schema: from then
// on every client's changes are written to the log (Enabled) or none are.
// Turning it off deletes nothing: the rows written stay until they are
// older than s.Retention, which must be at least 1s.
func (a *Admin) SetAudit(ctx context.Context, s AuditSettings) error {
	onOff := "off"
	if s.Enabled {
		onOff = "on"
	}
	if s.Retention < time.Second {
		return fmt.Errorf("sqldlm: turn the audit log %s: retention %s: use at least 1s", onOff, s.Retention)
	}
	if err := a.dialect.SetAuditSettings(ctx, a.db, &dialect.AuditSettings{Enabled: s.Enabled, Retention: s.Retention}); err != nil {
		return fmt.Errorf("sqldlm: turn the audit log %s: %w", onOff, err)
	}
	return nil
}

// AuditLog returns the audit log rows f selects, oldest first. The log is
// written only while it is on ([Admin.SetAudit], Config.Audit, `sqldlm log
// on`); the reaper deletes rows older than the retention.
func (a *Admin) AuditLog(ctx context.Context, f AuditFilter) ([]AuditEntry, error) {
	rows, err := a.dialect.AuditLog(ctx, a.db, &dialect.AuditFilter{Name: f.Name, Since: f.Since, Limit: f.Limit})
	if err != nil {
		return nil, fmt.Errorf("sqldlm: read the audit log: %w", err)
	}
	out := make([]AuditEntry, len(rows))
	for i, r := range rows {
		out[i] = AuditEntry{ID: r.ID, At: r.At, Event: string(r.Event), Name: r.Name, Owner: r.Owner, LeaseID: r.LeaseID,
			Token: r.Token, Mode: modeOf(r.Mode), Payload: r.Payload, Detail: r.Detail}
	}
	return out, nil
}
