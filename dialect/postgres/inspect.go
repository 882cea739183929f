package postgres

// Introspection. Locks and Leases are each one SELECT, so one snapshot, with
// the server's clock_timestamp() read once per statement (a materialized
// CTE) and returned with every row: the ages and expiries of one answer all
// agree. Break is one call of sqldlm_break (migration version 2; since
// version 3 it also writes the audit rows of the holds it breaks).

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

var _ dialect.Inspector = postgresDialect{}

// locksQuery returns the holds of names (those of dead leases too, flagged
// by live; rows of sqldlm_holders and holds in the names' rows) and their
// live waiters, holds first and waiters in line order,
// name by name (byte order: names are COLLATE "C"). $1 is a prefix of the
// names (empty for all), compared with = on left(), never LIKE, so that _,
// % and \ are plain characters; $2 keeps the names the owner holds or waits
// for, as shown (empty for all).
const locksQuery = `WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now),
x AS (
    SELECT h.name, false AS waiting, false AS upgrade, h.token AS seq, h.lease_id, h.mode::text AS mode,
           h.acquired_at AS since, l.owner, l.expires_at,
           coalesce(l.broken_at IS NULL AND l.expires_at > c.now, false) AS live, h.payload
      FROM sqldlm_holders h CROSS JOIN c LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
     WHERE ($1::text = '' OR left(h.name, char_length($1::text)) = $1::text)
    UNION ALL
    SELECT k.name, false, false, k.token, k.x_lease, k.x_mode::text, k.x_since, l.owner, l.expires_at,
           coalesce(l.broken_at IS NULL AND l.expires_at > c.now, false), coalesce(k.x_payload, '')
      FROM sqldlm_locks k CROSS JOIN c LEFT JOIN sqldlm_leases l ON l.id = k.x_lease
     WHERE k.x_lease IS NOT NULL
       AND ($1::text = '' OR left(k.name, char_length($1::text)) = $1::text)
    UNION ALL
    SELECT w.name, true, w.upgrade_token IS NOT NULL, w.id, w.lease_id, w.mode::text,
           w.since, l.owner, l.expires_at, true, ''
      FROM sqldlm_waiters w CROSS JOIN c JOIN sqldlm_leases l ON l.id = w.lease_id
     WHERE l.broken_at IS NULL AND l.expires_at > c.now
       AND ($1::text = '' OR left(w.name, char_length($1::text)) = $1::text))
SELECT x.name, coalesce(k.token, 0), x.waiting, x.upgrade, x.seq, x.lease_id, x.mode, x.since,
       coalesce(x.owner, ''), x.expires_at, x.live, c.now, x.payload
  FROM x CROSS JOIN c LEFT JOIN sqldlm_locks k ON k.name = x.name
 WHERE $2::text = '' OR x.name IN (SELECT y.name FROM x y WHERE y.owner = $2::text)
 ORDER BY x.name, x.waiting, NOT x.upgrade, x.seq`

func (d postgresDialect) Locks(ctx context.Context, db *sql.DB, f *dialect.LocksFilter) ([]dialect.LockState, error) {
	if f == nil {
		f = &dialect.LocksFilter{}
	}
	// Names are text, so a prefix that is not valid UTF-8 (or has a NUL)
	// cannot be a parameter: the server gets its longest valid head, and the
	// exact byte-wise test is repeated here.
	if f.Owner != "" && textHead(f.Owner) != f.Owner {
		return nil, nil // owners are text: one PostgreSQL cannot store owns nothing
	}
	rows, err := db.QueryContext(ctx, locksQuery, textHead(f.Prefix), f.Owner)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	defer rows.Close()
	byName := map[string]*dialect.LockState{}
	var order []string
	for rows.Next() {
		var (
			name, mode, owner string
			payload           string
			top, seq, lease   int64
			waiting, upgrade  bool
			live              bool
			since, now        time.Time
			expires           sql.NullTime
		)
		if err := rows.Scan(&name, &top, &waiting, &upgrade, &seq, &lease, &mode, &since, &owner, &expires, &live, &now, &payload); err != nil {
			return nil, d.ClassifyError(err)
		}
		if !strings.HasPrefix(name, f.Prefix) {
			continue
		}
		if len(mode) != 1 {
			return nil, fmt.Errorf("lock %q: unexpected mode %q", name, mode)
		}
		s, ok := byName[name]
		if !ok {
			s = &dialect.LockState{Name: name, Token: top}
			byName[name] = s
			order = append(order, name)
		}
		if waiting {
			s.Waiters = append(s.Waiters, dialect.WaiterState{Owner: owner, LeaseID: lease, Mode: dialect.Mode(mode[0]),
				Upgrade: upgrade, Since: since.UTC(), Waited: now.Sub(since), Position: len(s.Waiters) + 1})
			continue
		}
		var expiresIn time.Duration // 0 for a hold whose lease row is gone
		if expires.Valid {
			expiresIn = expires.Time.Sub(now)
		}
		s.Holders = append(s.Holders, dialect.HolderState{Owner: owner, LeaseID: lease, Mode: dialect.Mode(mode[0]), Token: seq,
			Since: since.UTC(), HeldFor: now.Sub(since), ExpiresIn: expiresIn, Live: live, Payload: payload})
	}
	if err := rows.Err(); err != nil {
		return nil, d.ClassifyError(err)
	}
	return sqlutil.SortedByName(byName, order), nil
}

// textHead returns the longest leading part of s that PostgreSQL accepts as
// text: valid UTF-8 without NUL bytes.
func textHead(s string) string {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == 0 || (r == utf8.RuneError && size == 1) {
			return s[:i]
		}
		i += size
	}
	return s
}

func (d postgresDialect) Leases(ctx context.Context, db *sql.DB) ([]dialect.LeaseState, error) {
	return d.leaseStates(ctx, db, `WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
		SELECT l.id, l.owner, l.created_at, l.renewed_at, l.expires_at,
		       (SELECT count(*) FROM sqldlm_holders h WHERE h.lease_id = l.id) + coalesce(x.n, 0),
		       (SELECT count(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id),
		       c.now, l.broken_at IS NOT NULL
		  FROM sqldlm_leases l CROSS JOIN c
		  LEFT JOIN (SELECT k.x_lease, count(*) AS n FROM sqldlm_locks k
		              WHERE k.x_lease IS NOT NULL GROUP BY k.x_lease) x ON x.x_lease = l.id
		 ORDER BY l.owner COLLATE "C", l.id`)
}

// Break is one call of sqldlm_break, which locks the live leases holding
// name FOR NO KEY UPDATE in id order (as a takeover does), marks them broken,
// writes a break audit row for each of their holds when audit is on, and
// notifies the names they hold or wait for, all in one transaction.
func (d postgresDialect) Break(ctx context.Context, db *sql.DB, name, owner string) ([]dialect.LeaseState, error) {
	return d.leaseStates(ctx, db, `SELECT o_id, o_owner, o_created_at, o_renewed_at, o_expires_at, o_holds, o_waits, o_now, true
		FROM sqldlm_break($1, $2)`, name, owner)
}

// leaseStates runs a query whose rows are id, owner, created_at, renewed_at,
// expires_at, holds, waits, the clock, broken.
func (d postgresDialect) leaseStates(ctx context.Context, db *sql.DB, query string, args ...any) ([]dialect.LeaseState, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	defer rows.Close()
	var out []dialect.LeaseState
	for rows.Next() {
		var s dialect.LeaseState
		var expires, now time.Time
		if err := rows.Scan(&s.ID, &s.Owner, &s.Created, &s.Renewed, &expires, &s.Holds, &s.Waits, &now, &s.Broken); err != nil {
			return nil, d.ClassifyError(err)
		}
		s.Created, s.Renewed = s.Created.UTC(), s.Renewed.UTC()
		s.ExpiresIn = expires.Sub(now)
		s.Live = !s.Broken && s.ExpiresIn > 0
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, d.ClassifyError(err)
	}
	return out, nil
}
