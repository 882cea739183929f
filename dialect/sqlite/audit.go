package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

// auditHolds writes, when the audit setting is on, one sqldlm_audit row of
// event for every hold that where selects: a condition on h (the holder
// row) and l (its lease, NULL when gone), with its own ? arguments. detail
// is an SQL expression with its own ? arguments, placed before where's.
// It runs before the holds are deleted (or after they are written).
func auditHolds(ctx context.Context, q dialect.Querier, now int64, event dialect.AuditEvent,
	detail string, detailArgs []any, where string, whereArgs ...any) error {
	args := make([]any, 0, 2+len(detailArgs)+len(whereArgs))
	args = append(args, now, string(event))
	args = append(args, detailArgs...)
	args = append(args, whereArgs...)
	_, err := q.ExecContext(ctx, `INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
		SELECT ?, ?, h.name, COALESCE(l.owner, ''), h.lease_id, h.token, h.mode, h.payload, `+detail+`
		FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
		WHERE (SELECT audit FROM sqldlm_settings WHERE id = 1) AND (`+where+`)
		ORDER BY h.token`, args...)
	return err
}

// noDetail is the detail expression of rows without one.
const noDetail = `''`

func (d *sqliteDialect) AuditSettings(ctx context.Context, db *sql.DB) (*dialect.AuditSettings, error) {
	var s dialect.AuditSettings
	var retention int64
	err := db.QueryRowContext(ctx, `SELECT audit, audit_retention_us FROM sqldlm_settings WHERE id = 1`).Scan(&s.Enabled, &retention)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	s.Retention = sqlutil.DurationMicros(retention)
	return &s, nil
}

func (d *sqliteDialect) SetAuditSettings(ctx context.Context, db *sql.DB, s *dialect.AuditSettings) error {
	if s.Retention < time.Second {
		return fmt.Errorf("audit retention %v: must be at least 1s", s.Retention)
	}
	_, err := d.exec(ctx, db, `UPDATE sqldlm_settings SET audit = ?, audit_retention_us = ? WHERE id = 1`,
		s.Enabled, s.Retention.Microseconds())
	return d.ClassifyError(err)
}

func (d *sqliteDialect) AuditLog(ctx context.Context, db *sql.DB, f *dialect.AuditFilter) (out []dialect.AuditEntry, err error) {
	limit := int64(-1)
	if f.Limit > 0 {
		limit = int64(f.Limit)
	}
	rows, err := db.QueryContext(ctx, `SELECT id, at, event, name, owner, lease_id, token, mode, payload, detail
		FROM sqldlm_audit
		WHERE (?1 = '' OR name = ?1) AND (?2 = 0 OR at >= `+nowMicros+` - ?2)
		ORDER BY id DESC LIMIT ?3`, f.Name, f.Since.Microseconds(), limit)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	defer rows.Close()
	for rows.Next() {
		var e dialect.AuditEntry
		var at int64
		var event, mode string
		if err := rows.Scan(&e.ID, &at, &event, &e.Name, &e.Owner, &e.LeaseID, &e.Token, &mode, &e.Payload, &e.Detail); err != nil {
			return nil, d.ClassifyError(err)
		}
		e.At, e.Event, e.Mode = sqlutil.TimeMicros(at), dialect.AuditEvent(event), dialect.Mode(mode[0])
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, d.ClassifyError(err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}
