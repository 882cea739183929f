package sqlite

// Group membership (schema version 5, migrations/00005_membership.sql).
// Join, Leave and SetMeta run in one BEGIN IMMEDIATE transaction each:
//
//	sweep       INSERT OR IGNORE group row; UPDATE the group's members'
//	            expired leases SET broken_at; DELETE the member rows of
//	            broken or missing leases (n rows); DELETE the group's
//	            withdrawal records of broken or missing leases; UPDATE the
//	            group's generation += n
//	Join        sweep; SELECT withdrawal record (withdrawn); SELECT the
//	            member of that id (joined again, or taken); SELECT own lease
//	            live; UPDATE generation += 1; INSERT member (incarnation =
//	            the new generation)
//	Leave       sweep; INSERT OR IGNORE withdrawal record; DELETE member;
//	            [UPDATE generation += 1]
//	SetMeta     sweep; UPDATE member WHERE lease live; [UPDATE generation += 1]
//	Members     one SELECT: generation + rows of broken or missing leases,
//	            the other members (expired ones flagged)
//	Generation  one SELECT: the same generation, and the expired count
//	Sweep       sweep

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

var _ dialect.Grouper = (*sqliteDialect)(nil)

// sweep makes sure the group's row exists, ends the group's dead members
// and returns the stored generation.
func sweep(ctx context.Context, conn *sql.Conn, group string, now int64) (int64, error) {
	if _, err := conn.ExecContext(ctx, `INSERT OR IGNORE INTO sqldlm_groups (name) VALUES (?)`, group); err != nil {
		return 0, err
	}
	if _, err := conn.ExecContext(ctx, `UPDATE sqldlm_leases SET broken_at = ?2
		WHERE id IN (SELECT lease_id FROM sqldlm_members WHERE group_name = ?1)
		  AND broken_at IS NULL AND expires_at <= ?2`, group, now); err != nil {
		return 0, err
	}
	if err := auditMembers(ctx, conn, now, dialect.AuditExpire, "member", `m.group_name = ? AND NOT EXISTS
		(SELECT 1 FROM sqldlm_leases x WHERE x.id = m.lease_id AND x.broken_at IS NULL)`, group); err != nil {
		return 0, err
	}
	res, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_members
		WHERE group_name = ? AND NOT EXISTS (SELECT 1 FROM sqldlm_leases l
		                                      WHERE l.id = sqldlm_members.lease_id AND l.broken_at IS NULL)`, group)
	if err != nil {
		return 0, err
	}
	swept, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	if _, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_member_withdrawn
		WHERE group_name = ? AND NOT EXISTS (SELECT 1 FROM sqldlm_leases l
		                                      WHERE l.id = sqldlm_member_withdrawn.lease_id AND l.broken_at IS NULL)`, group); err != nil {
		return 0, err
	}
	var gen int64
	err = conn.QueryRowContext(ctx, `UPDATE sqldlm_groups SET generation = generation + ?2 WHERE name = ?1 RETURNING generation`,
		group, swept).Scan(&gen)
	return gen, err
}

// auditMembers writes an audit row of event for each member row that
// where (on m, with its ? arguments) selects, when the audit log is on.
func auditMembers(ctx context.Context, conn *sql.Conn, now int64, event dialect.AuditEvent, detail, where string, args ...any) error {
	_, err := conn.ExecContext(ctx, `INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
		SELECT ?, ?, 'sqldlm:group:' || m.group_name || ':' || m.member_id, COALESCE(l.owner, ''), m.lease_id,
		       m.incarnation, 'X', m.meta, ?
		FROM sqldlm_members m LEFT JOIN sqldlm_leases l ON l.id = m.lease_id
		WHERE (SELECT audit FROM sqldlm_settings WHERE id = 1) AND (`+where+`)
		ORDER BY m.member_id`, append([]any{now, string(event), detail}, args...)...)
	return err
}

func bump(ctx context.Context, conn *sql.Conn, group string) (int64, error) {
	var gen int64
	err := conn.QueryRowContext(ctx, `UPDATE sqldlm_groups SET generation = generation + 1 WHERE name = ? RETURNING generation`, group).Scan(&gen)
	return gen, err
}

func (d *sqliteDialect) Join(ctx context.Context, db *sql.DB, p *dialect.JoinParams) (*dialect.JoinResult, error) {
	res := &dialect.JoinResult{}
	err := d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		gen, err := sweep(ctx, conn, p.Group, now)
		if err != nil {
			return err
		}
		res.Generation = gen
		var one int
		err = conn.QueryRowContext(ctx, `SELECT 1 FROM sqldlm_member_withdrawn WHERE lease_id = ? AND request_id = ?`,
			p.LeaseID, p.RequestID).Scan(&one)
		switch {
		case err == nil:
			res.Status = dialect.JoinWithdrawn
			return nil
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		h := dialect.MemberState{ID: p.ID}
		var expires int64
		err = conn.QueryRowContext(ctx, `SELECT m.lease_id, m.request_id, m.incarnation, l.owner, l.expires_at
			FROM sqldlm_members m JOIN sqldlm_leases l ON l.id = m.lease_id
			WHERE m.group_name = ? AND m.member_id = ?`, p.Group, p.ID).
			Scan(&h.LeaseID, &h.RequestID, &h.Incarnation, &h.Owner, &expires)
		switch {
		case err == nil:
			if h.LeaseID == p.LeaseID && h.RequestID == p.RequestID {
				res.Status, res.Incarnation = dialect.Joined, h.Incarnation
				return nil
			}
			h.ExpiresIn = time.Duration(expires-now) * time.Microsecond
			res.Status, res.Holder = dialect.MemberTaken, &h
			return nil
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		err = conn.QueryRowContext(ctx, `SELECT 1 FROM sqldlm_leases WHERE id = ? AND broken_at IS NULL AND expires_at > ?`,
			p.LeaseID, now).Scan(&one)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			res.Status = dialect.JoinLeaseNotLive
			return nil
		case err != nil:
			return err
		}
		if gen, err = bump(ctx, conn, p.Group); err != nil {
			return err
		}
		if _, err = conn.ExecContext(ctx, `INSERT INTO sqldlm_members
			(group_name, member_id, lease_id, request_id, incarnation, meta, weight, joined_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, p.Group, p.ID, p.LeaseID, p.RequestID, gen, p.Meta, p.Weight, now); err != nil {
			return err
		}
		res.Status, res.Incarnation, res.Generation = dialect.Joined, gen, gen
		return auditMembers(ctx, conn, now, dialect.AuditJoin, "", `m.group_name = ? AND m.member_id = ?`, p.Group, p.ID)
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (d *sqliteDialect) Leave(ctx context.Context, db *sql.DB, m *dialect.MemberRef) (bool, error) {
	var left bool
	err := d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		if _, err := sweep(ctx, conn, m.Group, now); err != nil {
			return err
		}
		if _, err := conn.ExecContext(ctx, `INSERT OR IGNORE INTO sqldlm_member_withdrawn
			(lease_id, request_id, group_name, withdrawn_at) VALUES (?, ?, ?, ?)`, m.LeaseID, m.RequestID, m.Group, now); err != nil {
			return err
		}
		const mine = `m.group_name = ? AND m.member_id = ? AND m.lease_id = ? AND m.request_id = ?`
		if err := auditMembers(ctx, conn, now, dialect.AuditLeave, "", mine, m.Group, m.ID, m.LeaseID, m.RequestID); err != nil {
			return err
		}
		res, err := conn.ExecContext(ctx, `DELETE FROM sqldlm_members
			WHERE group_name = ? AND member_id = ? AND lease_id = ? AND request_id = ?`, m.Group, m.ID, m.LeaseID, m.RequestID)
		if left, err = affected(res, err, d); err != nil || !left {
			return err
		}
		_, err = bump(ctx, conn, m.Group)
		return err
	})
	return left, err
}

func (d *sqliteDialect) SetMeta(ctx context.Context, db *sql.DB, m *dialect.MemberRef, meta string) (bool, error) {
	var ok bool
	err := d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		if _, err := sweep(ctx, conn, m.Group, now); err != nil {
			return err
		}
		res, err := conn.ExecContext(ctx, `UPDATE sqldlm_members SET meta = ?5
			WHERE group_name = ?1 AND member_id = ?2 AND lease_id = ?3 AND request_id = ?4
			  AND EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = ?3 AND l.broken_at IS NULL AND l.expires_at > ?6)`,
			m.Group, m.ID, m.LeaseID, m.RequestID, meta, now)
		if ok, err = affected(res, err, d); err != nil || !ok {
			return err
		}
		if _, err = bump(ctx, conn, m.Group); err != nil {
			return err
		}
		return auditMembers(ctx, conn, now, dialect.AuditUpdate, "",
			`m.group_name = ? AND m.member_id = ? AND m.lease_id = ? AND m.request_id = ?`, m.Group, m.ID, m.LeaseID, m.RequestID)
	})
	return ok, err
}

// groupRead is the members of a group with their liveness, by one clock
// reading; the generation query and the members query both start with it.
const groupRead = `WITH c AS (SELECT ` + nowMicros + ` AS now),
m AS (SELECT mm.*, l.owner AS lease_owner, l.expires_at,
             COALESCE(l.id IS NOT NULL AND l.broken_at IS NULL, 0) AS live, COALESCE(l.expires_at <= c.now, 0) AS expired
        FROM sqldlm_members mm CROSS JOIN c LEFT JOIN sqldlm_leases l ON l.id = mm.lease_id
       WHERE mm.group_name = ?1),
g AS (SELECT COALESCE((SELECT generation FROM sqldlm_groups WHERE name = ?1), 0)
             + (SELECT COUNT(*) FROM m WHERE NOT m.live) AS generation,
             (SELECT COUNT(*) FROM m WHERE m.live AND m.expired) AS expired)
`

func (d *sqliteDialect) Members(ctx context.Context, db *sql.DB, group string) (*dialect.GroupState, error) {
	rows, err := db.QueryContext(ctx, groupRead+`
SELECT g.generation, m.member_id, m.lease_owner, m.lease_id, m.request_id, m.incarnation, m.meta, m.weight,
       m.joined_at, m.expires_at - c.now, m.expired
  FROM g CROSS JOIN c LEFT JOIN m ON m.live
 ORDER BY m.member_id`, group)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	defer rows.Close()
	st := &dialect.GroupState{}
	for rows.Next() {
		var (
			id, owner, meta               sql.NullString
			lease, req, inc, joined, exUs sql.NullInt64
			weight                        sql.NullFloat64
			expired                       sql.NullBool
		)
		if err := rows.Scan(&st.Generation, &id, &owner, &lease, &req, &inc, &meta, &weight, &joined, &exUs, &expired); err != nil {
			return nil, d.ClassifyError(err)
		}
		if !id.Valid {
			continue
		}
		st.Members = append(st.Members, dialect.MemberState{
			ID: id.String, Owner: owner.String, LeaseID: lease.Int64, RequestID: req.Int64,
			Incarnation: inc.Int64, Meta: meta.String, Weight: weight.Float64,
			Joined: time.UnixMicro(joined.Int64).UTC(), ExpiresIn: time.Duration(exUs.Int64) * time.Microsecond,
			Expired: expired.Bool,
		})
	}
	if err := rows.Err(); err != nil {
		return nil, d.ClassifyError(err)
	}
	return st, nil
}

func (d *sqliteDialect) Generation(ctx context.Context, db *sql.DB, group string) (int64, int, error) {
	var gen, expired int64
	err := db.QueryRowContext(ctx, groupRead+`SELECT generation, expired FROM g`, group).Scan(&gen, &expired)
	return gen, int(expired), d.ClassifyError(err)
}

func (d *sqliteDialect) Sweep(ctx context.Context, db *sql.DB, group string) (int64, error) {
	var gen int64
	err := d.writeTx(ctx, db, func(conn *sql.Conn, now int64) error {
		var err error
		gen, err = sweep(ctx, conn, group, now)
		return err
	})
	return gen, err
}
