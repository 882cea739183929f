package mysql

// The Inspector's operations are stored procedures too (migration 2), so
// that ages and expiries come from SYSDATE(6) under time_zone '+00:00',
// whatever the session's time_zone or SET timestamp:
//
//	Locks   CALL sqldlm_inspect_locks: in one READ ONLY transaction WITH
//	        CONSISTENT SNAPSHOT, the holds, then the live waiters, of the
//	        names matching the filter (two result sets)
//	Leases  CALL sqldlm_inspect_leases: in one READ ONLY transaction WITH
//	        CONSISTENT SNAPSHOT, every lease with its holds and waits
//	Break   CALL sqldlm_break: per live lease holding the name, in id order:
//	        SELECT lease FOR UPDATE SKIP LOCKED, re-check it, UPDATE it
//	        broken (one result set per lease); then the number of live
//	        leases it skipped because another transaction had them locked
//
// Names and owners are bind parameters; the prefix is compared byte by byte
// on the server (LEFT of the VARBINARY name), never through LIKE.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

var _ dialect.Inspector = mysqlDialect{}

// Columns of sqldlm_inspect_locks's result sets, which tell them apart.
const (
	holdColumns   = 11
	waiterColumns = 8
)

func (d mysqlDialect) Locks(ctx context.Context, db *sql.DB, f *dialect.LocksFilter) ([]dialect.LockState, error) {
	if f == nil {
		f = &dialect.LocksFilter{}
	}
	byName := map[string]*dialect.LockState{}
	var names []string
	state := func(name string, token int64) *dialect.LockState {
		s, ok := byName[name]
		if !ok {
			s = &dialect.LockState{Name: name, Token: token}
			byName[name] = s
			names = append(names, name)
		}
		return s
	}
	err := d.call(ctx, db, func(rows *sql.Rows, columns []string) error {
		switch len(columns) {
		case holdColumns:
			var (
				name, mode, owner, payload         string
				top, token, lease, since, held, in int64
				live                               bool
			)
			if err := rows.Scan(&name, &top, &token, &lease, &mode, &since, &held, &owner, &in, &live, &payload); err != nil {
				return err
			}
			s := state(name, top)
			s.Holders = append(s.Holders, dialect.HolderState{Owner: owner, LeaseID: lease, Mode: modeOf(mode), Token: token,
				Since: sqlutil.TimeMicros(since), HeldFor: sqlutil.DurationMicros(held), ExpiresIn: sqlutil.DurationMicros(in), Live: live, Payload: payload})
		case waiterColumns:
			var (
				name, owner, mode         string
				top, lease, since, waited int64
				upgrade                   bool
			)
			if err := rows.Scan(&name, &top, &owner, &lease, &mode, &upgrade, &since, &waited); err != nil {
				return err
			}
			s := state(name, top)
			s.Waiters = append(s.Waiters, dialect.WaiterState{Owner: owner, LeaseID: lease, Mode: modeOf(mode), Upgrade: upgrade,
				Since: sqlutil.TimeMicros(since), Waited: sqlutil.DurationMicros(waited), Position: len(s.Waiters) + 1})
		default:
			return fmt.Errorf("sqldlm_inspect_locks returned a result set of %d columns", len(columns))
		}
		return nil
	}, `CALL sqldlm_inspect_locks(?, ?)`, f.Prefix, f.Owner)
	if err != nil {
		return nil, err
	}
	return sqlutil.SortedByName(byName, names), nil
}

func (d mysqlDialect) Leases(ctx context.Context, db *sql.DB) ([]dialect.LeaseState, error) {
	var out []dialect.LeaseState
	err := d.call(ctx, db, func(rows *sql.Rows, _ []string) error {
		s, err := scanLease(rows)
		if err != nil {
			return err
		}
		out = append(out, s)
		return nil
	}, `CALL sqldlm_inspect_leases()`)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// breakBackoff is how long Break waits before each new call of sqldlm_break
// while leases it must break are locked by other transactions (about 0.6 s in
// all). Such locks are mostly brief (a renewal, a grant); those that are not
// (a fenced transaction's, see sqldlm_break) are not waited for.
var breakBackoff = []time.Duration{
	5 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond,
	80 * time.Millisecond, 160 * time.Millisecond, 320 * time.Millisecond,
}

// Break calls sqldlm_break, which never waits for a row lock: a live lease
// holding name whose row another transaction has locked is skipped. Break
// then calls it again after a short pause, a few times. If leases are still
// skipped after that (their rows are pinned by a fenced transaction, or by a
// DeleteLease waiting for one), Break returns the leases it did break along
// with an error matching dialect.ErrLockTimeout (retryable): those leases
// are left live.
func (d mysqlDialect) Break(ctx context.Context, db *sql.DB, name, owner string) ([]dialect.LeaseState, error) {
	var out []dialect.LeaseState
	err := func() error {
		for attempt := 0; ; attempt++ {
			skipped, err := d.breakOnce(ctx, db, name, owner, &out)
			if err != nil || skipped == 0 {
				return err
			}
			if attempt == len(breakBackoff) {
				return dialect.NewError(dialect.ErrLockTimeout, "", fmt.Errorf(
					"break %q: %d live lease(s) holding it are locked by another transaction (a fenced one, or a deletion waiting for one) and were not broken; try again",
					name, skipped))
			}
			t := time.NewTimer(breakBackoff[attempt])
			select {
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			case <-t.C:
			}
		}
	}()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Owner != out[j].Owner {
			return out[i].Owner < out[j].Owner
		}
		return out[i].ID < out[j].ID
	})
	return out, err
}

// breakOnce calls sqldlm_break once, appends the leases it broke to out
// (only once the call has succeeded, so after its COMMIT) and returns the
// number it skipped.
func (d mysqlDialect) breakOnce(ctx context.Context, db *sql.DB, name, owner string, out *[]dialect.LeaseState) (int, error) {
	var broken []dialect.LeaseState
	skipped := -1
	err := d.call(ctx, db, func(rows *sql.Rows, columns []string) error {
		if len(columns) == 1 {
			return rows.Scan(&skipped)
		}
		s, err := scanLease(rows)
		if err != nil {
			return err
		}
		broken = append(broken, s)
		return nil
	}, `CALL sqldlm_break(?, ?)`, name, owner)
	if err != nil {
		return 0, err
	}
	if skipped < 0 {
		return 0, errors.New("sqldlm_break returned no count")
	}
	*out = append(*out, broken...)
	return skipped, nil
}

// scanLease reads a row of sqldlm_inspect_leases's columns.
func scanLease(rows *sql.Rows) (dialect.LeaseState, error) {
	var s dialect.LeaseState
	var created, renewed, in int64
	if err := rows.Scan(&s.ID, &s.Owner, &created, &renewed, &in, &s.Broken, &s.Live, &s.Holds, &s.Waits); err != nil {
		return s, err
	}
	s.Created, s.Renewed, s.ExpiresIn = sqlutil.TimeMicros(created), sqlutil.TimeMicros(renewed), sqlutil.DurationMicros(in)
	return s, nil
}

func modeOf(s string) dialect.Mode {
	if s == string(dialect.Exclusive) {
		return dialect.Exclusive
	}
	return dialect.Shared
}
