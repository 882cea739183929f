package sqlite

import (
	"context"
	"database/sql"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

// nameFilter keeps names starting with ?1 (byte-wise: the BLOB casts make
// substr count bytes) and, when ?2 is not empty, names that owner ?2 holds
// or waits for.
const nameFilter = `(?1 = '' OR substr(CAST(x.name AS BLOB), 1, length(CAST(?1 AS BLOB))) = CAST(?1 AS BLOB))
	AND (?2 = '' OR x.name IN (SELECT h.name FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id WHERE l.owner = ?2
	                           UNION SELECT w.name FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id WHERE l.owner = ?2))`

func (d *sqliteDialect) Locks(ctx context.Context, db *sql.DB, f *dialect.LocksFilter) (out []dialect.LockState, err error) {
	err = d.readTx(ctx, db, func(conn *sql.Conn, now int64) error {
		byName := map[string]*dialect.LockState{}
		var order []string
		state := func(name string, token int64) *dialect.LockState {
			s, ok := byName[name]
			if !ok {
				s = &dialect.LockState{Name: name, Token: token}
				byName[name] = s
				order = append(order, name)
			}
			return s
		}
		rows, err := conn.QueryContext(ctx, `SELECT x.name, COALESCE(k.token, 0), x.token, x.lease_id, x.mode, x.acquired_at,
				COALESCE(l.owner, ''), COALESCE(l.expires_at, 0), COALESCE(l.broken_at IS NULL AND l.expires_at > ?3, 0), x.payload
			FROM sqldlm_holders x LEFT JOIN sqldlm_leases l ON l.id = x.lease_id LEFT JOIN sqldlm_locks k ON k.name = x.name
			WHERE `+nameFilter+` ORDER BY x.name, x.token`, f.Prefix, f.Owner, now)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name, mode, owner, payload string
			var top, token, lease, since, expires int64
			var live bool
			if err := rows.Scan(&name, &top, &token, &lease, &mode, &since, &owner, &expires, &live, &payload); err != nil {
				return err
			}
			s := state(name, top)
			s.Holders = append(s.Holders, dialect.HolderState{Owner: owner, LeaseID: lease, Mode: dialect.Mode(mode[0]), Token: token,
				Since: sqlutil.TimeMicros(since), HeldFor: sqlutil.DurationMicros(now - since), ExpiresIn: sqlutil.DurationMicros(expires - now), Live: live, Payload: payload})
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = conn.QueryContext(ctx, `SELECT x.name, COALESCE(k.token, 0), l.owner, x.lease_id, x.mode, x.upgrade_token IS NOT NULL, x.since
			FROM sqldlm_waiters x JOIN sqldlm_leases l ON l.id = x.lease_id LEFT JOIN sqldlm_locks k ON k.name = x.name
			WHERE l.broken_at IS NULL AND l.expires_at > ?3 AND `+nameFilter+`
			ORDER BY x.name, x.upgrade_token IS NULL, x.id`, f.Prefix, f.Owner, now)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name, owner, mode string
			var top, lease, since int64
			var upgrade bool
			if err := rows.Scan(&name, &top, &owner, &lease, &mode, &upgrade, &since); err != nil {
				return err
			}
			s := state(name, top)
			s.Waiters = append(s.Waiters, dialect.WaiterState{Owner: owner, LeaseID: lease, Mode: dialect.Mode(mode[0]), Upgrade: upgrade,
				Since: sqlutil.TimeMicros(since), Waited: sqlutil.DurationMicros(now - since), Position: len(s.Waiters) + 1})
		}
		if err := rows.Err(); err != nil {
			return err
		}
		out = sqlutil.SortedByName(byName, order)
		return nil
	})
	return out, err
}

func (d *sqliteDialect) Leases(ctx context.Context, db *sql.DB) (out []dialect.LeaseState, err error) {
	err = d.readTx(ctx, db, func(conn *sql.Conn, now int64) error {
		out, err = d.leases(ctx, conn, now, `1 = 1`)
		return err
	})
	return out, err
}

func (d *sqliteDialect) leases(ctx context.Context, conn *sql.Conn, now int64, where string, args ...any) ([]dialect.LeaseState, error) {
	rows, err := conn.QueryContext(ctx, `SELECT l.id, l.owner, l.created_at, l.renewed_at, l.expires_at, l.broken_at IS NOT NULL,
			(SELECT COUNT(*) FROM sqldlm_holders h WHERE h.lease_id = l.id),
			(SELECT COUNT(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id)
		FROM sqldlm_leases l WHERE `+where+` ORDER BY l.owner, l.id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []dialect.LeaseState
	for rows.Next() {
		var s dialect.LeaseState
		var created, renewed, expires int64
		if err := rows.Scan(&s.ID, &s.Owner, &created, &renewed, &expires, &s.Broken, &s.Holds, &s.Waits); err != nil {
			return nil, err
		}
		s.Created, s.Renewed, s.ExpiresIn = sqlutil.TimeMicros(created), sqlutil.TimeMicros(renewed), sqlutil.DurationMicros(expires-now)
		s.Live = !s.Broken && expires > now
		out = append(out, s)
	}
	return out, rows.Err()
}

func (d *sqliteDialect) Break(ctx context.Context, db *sql.DB, name, owner string) (out []dialect.LeaseState, err error) {
	err = d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		const victims = `l.broken_at IS NULL AND l.expires_at > ?1 AND (?3 = '' OR l.owner = ?3)
			AND l.id IN (SELECT lease_id FROM sqldlm_holders WHERE name = ?2)`
		out, err = d.leases(ctx, conn, now, victims, now, name, owner)
		if err != nil {
			return err
		}
		if err := auditHolds(ctx, conn, now, dialect.AuditBreak, `CASE WHEN h.name = ? THEN '' ELSE 'with ' || ? END`, []any{name, name},
			`h.lease_id IN (SELECT l.id FROM sqldlm_leases l WHERE l.broken_at IS NULL AND l.expires_at > ? AND (? = '' OR l.owner = ?)
				AND l.id IN (SELECT lease_id FROM sqldlm_holders WHERE name = ?))`, now, owner, owner, name); err != nil {
			return err
		}
		_, err = conn.ExecContext(ctx, `UPDATE sqldlm_leases AS l SET broken_at = ?1, expires_at = MIN(expires_at, ?1) WHERE `+victims, now, name, owner)
		return err
	})
	for i := range out {
		out[i].Broken, out[i].Live, out[i].ExpiresIn = true, false, 0
	}
	return out, err
}
