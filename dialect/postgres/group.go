package postgres

// Group membership: one function call per operation (schema version 9,
// migrations/00009_membership.sql explains the generation, the sweep and
// the failover freeze). These functions are the contract for clients in
// other languages too:
//
//	Join        SELECT * FROM sqldlm_group_join(group, member, lease, request, meta, weight)
//	Leave       SELECT * FROM sqldlm_group_leave(group, member, lease, request)
//	SetMeta     SELECT * FROM sqldlm_group_set_meta(group, member, lease, request, meta)
//	Members     SELECT * FROM sqldlm_group_members(group)
//	Generation  SELECT * FROM sqldlm_group_generation(group)
//	Sweep       SELECT sqldlm_group_sweep(group)

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

var _ dialect.Grouper = postgresDialect{}

func (d postgresDialect) Join(ctx context.Context, db *sql.DB, p *dialect.JoinParams) (*dialect.JoinResult, error) {
	var (
		status                string
		inc, gen              int64
		owner                 sql.NullString
		lease, req, expiresUs sql.NullInt64
		incN                  sql.NullInt64
	)
	err := db.QueryRowContext(ctx, `SELECT * FROM sqldlm_group_join($1, $2, $3, $4, $5, $6)`,
		p.Group, p.ID, p.LeaseID, p.RequestID, p.Meta, p.Weight).
		Scan(&status, &incN, &gen, &owner, &lease, &req, &expiresUs)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	inc = incN.Int64
	res := &dialect.JoinResult{Incarnation: inc, Generation: gen}
	switch status {
	case "joined":
		res.Status = dialect.Joined
	case "taken":
		res.Status = dialect.MemberTaken
		res.Incarnation = 0
		res.Holder = &dialect.MemberState{
			ID: p.ID, Owner: owner.String, LeaseID: lease.Int64, RequestID: req.Int64,
			Incarnation: inc, ExpiresIn: time.Duration(expiresUs.Int64) * time.Microsecond,
		}
	case "lease_lost":
		res.Status = dialect.JoinLeaseNotLive
	case "withdrawn":
		res.Status = dialect.JoinWithdrawn
	default:
		return nil, fmt.Errorf("sqldlm_group_join returned the unknown status %q", status)
	}
	return res, nil
}

func (d postgresDialect) Leave(ctx context.Context, db *sql.DB, m *dialect.MemberRef) (bool, error) {
	var left bool
	var gen int64
	err := db.QueryRowContext(ctx, `SELECT * FROM sqldlm_group_leave($1, $2, $3, $4)`,
		m.Group, m.ID, m.LeaseID, m.RequestID).Scan(&left, &gen)
	return left, d.ClassifyError(err)
}

func (d postgresDialect) SetMeta(ctx context.Context, db *sql.DB, m *dialect.MemberRef, meta string) (bool, error) {
	var ok bool
	var gen int64
	err := db.QueryRowContext(ctx, `SELECT * FROM sqldlm_group_set_meta($1, $2, $3, $4, $5)`,
		m.Group, m.ID, m.LeaseID, m.RequestID, meta).Scan(&ok, &gen)
	return ok, d.ClassifyError(err)
}

func (d postgresDialect) Members(ctx context.Context, db *sql.DB, group string) (*dialect.GroupState, error) {
	rows, err := db.QueryContext(ctx, `SELECT * FROM sqldlm_group_members($1)`, group)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	defer rows.Close()
	st := &dialect.GroupState{}
	for rows.Next() {
		var (
			id, owner, meta       sql.NullString
			lease, req, inc, exUs sql.NullInt64
			weight                sql.NullFloat64
			joined                sql.NullTime
			expired               sql.NullBool
		)
		if err := rows.Scan(&st.Generation, &id, &owner, &lease, &req, &inc, &meta, &weight, &joined, &exUs, &expired); err != nil {
			return nil, d.ClassifyError(err)
		}
		if !id.Valid {
			continue // the row of a group without live members
		}
		st.Members = append(st.Members, dialect.MemberState{
			ID: id.String, Owner: owner.String, LeaseID: lease.Int64, RequestID: req.Int64,
			Incarnation: inc.Int64, Meta: meta.String, Weight: weight.Float64,
			Joined: joined.Time, ExpiresIn: time.Duration(exUs.Int64) * time.Microsecond, Expired: expired.Bool,
		})
	}
	if err := rows.Err(); err != nil {
		return nil, d.ClassifyError(err)
	}
	return st, nil
}

func (d postgresDialect) Generation(ctx context.Context, db *sql.DB, group string) (int64, int, error) {
	var gen, expired int64
	err := db.QueryRowContext(ctx, `SELECT * FROM sqldlm_group_generation($1)`, group).Scan(&gen, &expired)
	return gen, int(expired), d.ClassifyError(err)
}

func (d postgresDialect) Sweep(ctx context.Context, db *sql.DB, group string) (int64, error) {
	var gen int64
	err := db.QueryRowContext(ctx, `SELECT sqldlm_group_sweep($1)`, group).Scan(&gen)
	return gen, d.ClassifyError(err)
}
