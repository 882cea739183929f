package mysql

// Group membership: one CALL per operation (schema version 7,
// migrations/00007_membership.sql explains the generation, the sweep and
// how Galera serializes the operations). The procedures are the contract
// for clients in other languages too:
//
//	Join        CALL sqldlm_group_join(group, member, lease, request, meta, weight):
//	            START TRANSACTION; sqldlm_group_lock (below); SELECT
//	            withdrawal record (withdrawn, status 4); SELECT the member
//	            of that id (joined again, status 1, or taken, status 2);
//	            SELECT own lease live (not live: status 3); UPDATE
//	            generation + 1; INSERT member (incarnation = the new
//	            generation); COMMIT; the status row
//	Leave       CALL sqldlm_group_leave(group, member, lease, request):
//	            sqldlm_group_lock; INSERT withdrawal record ... ON
//	            DUPLICATE KEY UPDATE; DELETE member; [UPDATE generation + 1]
//	SetMeta     CALL sqldlm_group_set_meta(group, member, lease, request, meta):
//	            sqldlm_group_lock; SELECT member; SELECT its lease live;
//	            [UPDATE member; UPDATE generation + 1]
//	Members     CALL sqldlm_group_members(group): in one READ ONLY
//	            transaction WITH CONSISTENT SNAPSHOT, the generation (stored
//	            + member rows of broken or missing leases), then the
//	            other members, each with whether its lease has expired (a
//	            read decides no expiry: the caller sweeps)
//	Generation  CALL sqldlm_group_generation(group): the generation alone,
//	            and how many members' leases have expired unbroken
//	Sweep       CALL sqldlm_group_sweep(group): sqldlm_group_lock in a
//	            transaction of its own
//
// sqldlm_group_lock, in the caller's transaction: INSERT the group's row
// ... ON DUPLICATE KEY UPDATE writes = writes + 1 (created, locked and
// written: through Galera a certification key of every operation); read
// SYSDATE(6); per expired lease of a member, in id order: SELECT it FOR
// UPDATE SKIP LOCKED re-checking the expiry, UPDATE it broken; per member
// row of a broken or missing lease (consistent reads): DELETE it by
// primary key; likewise the group's withdrawal records; UPDATE generation
// + the number of member rows deleted.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

var _ dialect.Grouper = mysqlDialect{}

// Statuses returned by sqldlm_group_join.
const (
	joinJoined    = 1
	joinTaken     = 2
	joinLeaseLost = 3
	joinWithdrawn = 4
)

// Columns of sqldlm_group_members's result sets, which tell them apart.
const (
	generationColumns = 1
	memberColumns     = 10
)

func (d mysqlDialect) Join(ctx context.Context, db *sql.DB, p *dialect.JoinParams) (*dialect.JoinResult, error) {
	stmt, err := d.prepared(ctx, db, `CALL sqldlm_group_join(?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return nil, err
	}
	var (
		status                   int
		gen                      int64
		inc, lease, req, expires sql.NullInt64
		owner                    sql.NullString
	)
	err = stmt.QueryRowContext(ctx, p.Group, p.ID, p.LeaseID, p.RequestID, p.Meta, p.Weight).
		Scan(&status, &inc, &gen, &owner, &lease, &req, &expires)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	res := &dialect.JoinResult{Generation: gen}
	switch status {
	case joinJoined:
		if !inc.Valid {
			return nil, errors.New("sqldlm_group_join joined without an incarnation")
		}
		res.Status, res.Incarnation = dialect.Joined, inc.Int64
	case joinTaken:
		res.Status = dialect.MemberTaken
		res.Holder = &dialect.MemberState{
			ID: p.ID, Owner: owner.String, LeaseID: lease.Int64, RequestID: req.Int64,
			Incarnation: inc.Int64, ExpiresIn: sqlutil.DurationMicros(expires.Int64),
		}
	case joinLeaseLost:
		res.Status = dialect.JoinLeaseNotLive
	case joinWithdrawn:
		res.Status = dialect.JoinWithdrawn
	default:
		return nil, fmt.Errorf("sqldlm_group_join returned unknown status %d", status)
	}
	return res, nil
}

func (d mysqlDialect) Leave(ctx context.Context, db *sql.DB, m *dialect.MemberRef) (bool, error) {
	return d.callChanged(ctx, db, `CALL sqldlm_group_leave(?, ?, ?, ?)`, m.Group, m.ID, m.LeaseID, m.RequestID)
}

func (d mysqlDialect) SetMeta(ctx context.Context, db *sql.DB, m *dialect.MemberRef, meta string) (bool, error) {
	return d.callChanged(ctx, db, `CALL sqldlm_group_set_meta(?, ?, ?, ?, ?)`, m.Group, m.ID, m.LeaseID, m.RequestID, meta)
}

// callChanged calls a group procedure that returns one row: whether it
// changed a member, and the group's stored generation.
func (d mysqlDialect) callChanged(ctx context.Context, db *sql.DB, query string, args ...any) (bool, error) {
	stmt, err := d.prepared(ctx, db, query)
	if err != nil {
		return false, err
	}
	var changed, gen int64
	if err := stmt.QueryRowContext(ctx, args...).Scan(&changed, &gen); err != nil {
		return false, d.ClassifyError(err)
	}
	return changed != 0, nil
}

func (d mysqlDialect) Members(ctx context.Context, db *sql.DB, group string) (*dialect.GroupState, error) {
	st := &dialect.GroupState{}
	var got bool
	err := d.call(ctx, db, func(rows *sql.Rows, columns []string) error {
		switch len(columns) {
		case generationColumns:
			got = true
			return rows.Scan(&st.Generation)
		case memberColumns:
			var (
				m             dialect.MemberState
				joined, expUS int64
			)
			if err := rows.Scan(&m.ID, &m.Owner, &m.LeaseID, &m.RequestID, &m.Incarnation, &m.Meta, &m.Weight,
				&joined, &expUS, &m.Expired); err != nil {
				return err
			}
			m.Joined, m.ExpiresIn = sqlutil.TimeMicros(joined), sqlutil.DurationMicros(expUS)
			st.Members = append(st.Members, m)
			return nil
		default:
			return fmt.Errorf("sqldlm_group_members returned a result set of %d columns", len(columns))
		}
	}, `CALL sqldlm_group_members(?)`, group)
	if err != nil {
		return nil, err
	}
	if !got {
		return nil, errors.New("sqldlm_group_members returned no generation")
	}
	return st, nil
}

func (d mysqlDialect) Generation(ctx context.Context, db *sql.DB, group string) (int64, int, error) {
	stmt, err := d.prepared(ctx, db, `CALL sqldlm_group_generation(?)`)
	if err != nil {
		return 0, 0, err
	}
	var gen, expired int64
	if err := stmt.QueryRowContext(ctx, group).Scan(&gen, &expired); err != nil {
		return 0, 0, d.ClassifyError(err)
	}
	return gen, int(expired), nil
}

func (d mysqlDialect) Sweep(ctx context.Context, db *sql.DB, group string) (int64, error) {
	stmt, err := d.prepared(ctx, db, `CALL sqldlm_group_sweep(?)`)
	if err != nil {
		return 0, err
	}
	var gen int64
	if err := stmt.QueryRowContext(ctx, group).Scan(&gen); err != nil {
		return 0, d.ClassifyError(err)
	}
	return gen, nil
}
