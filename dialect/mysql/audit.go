package mysql

// The audit log's rows are written by the procedures themselves (migration
// 3), in the transaction of the change. Reading and configuring it is plain
// SQL:
//
//	AuditSettings     SELECT the one row of sqldlm_settings
//	SetAuditSettings  UPDATE it
//	AuditLog          SELECT from sqldlm_audit, newest first, LIMIT; times
//	                  as microseconds since the Unix epoch (no parseTime)
//
// AuditFilter.Since counts back from UTC_TIMESTAMP(6), the statement's start
// by the server's clock: a plain statement cannot set the session's
// time_zone, which SYSDATE follows. A session that has SET timestamp sees
// that window shifted by as much (as the views of migration 2 do); no
// decision about a lock depends on it.

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

var _ dialect.Auditor = mysqlDialect{}

func (d mysqlDialect) AuditSettings(ctx context.Context, db *sql.DB) (*dialect.AuditSettings, error) {
	var s dialect.AuditSettings
	var retention int64
	err := db.QueryRowContext(ctx, `SELECT audit, audit_retention_us FROM sqldlm_settings WHERE id = 1`).Scan(&s.Enabled, &retention)
	if err != nil {
		return nil, fmt.Errorf("read audit settings: %w", d.ClassifyError(err))
	}
	s.Retention = sqlutil.DurationMicros(retention)
	return &s, nil
}

// SetAuditSettings updates the setting; Retention is stored in microseconds
// and must be at least one second.
func (d mysqlDialect) SetAuditSettings(ctx context.Context, db *sql.DB, s *dialect.AuditSettings) error {
	if s.Retention < time.Second {
		return fmt.Errorf("audit retention %v: must be at least 1s", s.Retention)
	}
	stmt, err := d.prepared(ctx, db, `UPDATE sqldlm_settings SET audit = ?, audit_retention_us = ? WHERE id = 1`)
	if err != nil {
		return fmt.Errorf("update audit settings: %w", err)
	}
	if _, err := stmt.ExecContext(ctx, s.Enabled, s.Retention.Microseconds()); err != nil {
		return fmt.Errorf("update audit settings: %w", d.ClassifyError(err))
	}
	return nil
}

// AuditLog returns the rows f selects, oldest first. Names are compared byte
// by byte (the column is VARBINARY).
func (d mysqlDialect) AuditLog(ctx context.Context, db *sql.DB, f *dialect.AuditFilter) ([]dialect.AuditEntry, error) {
	if f == nil {
		f = &dialect.AuditFilter{}
	}
	limit := int64(math.MaxInt64)
	if f.Limit > 0 {
		limit = int64(f.Limit)
	}
	since := max(f.Since, 0)
	since = min(since, maxIdleAfter) // within DATETIME's range
	stmt, err := d.prepared(ctx, db, `SELECT id, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', at), event, name, owner,
		lease_id, token, mode, payload, detail
		FROM sqldlm_audit
		WHERE (? = '' OR name = ?)
		  AND (? = 0 OR at >= UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND)
		ORDER BY id DESC
		LIMIT ?`)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	rows, err := stmt.QueryContext(ctx, f.Name, f.Name, since.Microseconds(), since.Microseconds(), limit)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", d.ClassifyError(err))
	}
	defer rows.Close()
	var out []dialect.AuditEntry
	for rows.Next() {
		var (
			e           dialect.AuditEntry
			at          int64
			event, mode string
		)
		if err := rows.Scan(&e.ID, &at, &event, &e.Name, &e.Owner, &e.LeaseID, &e.Token, &mode, &e.Payload, &e.Detail); err != nil {
			return nil, fmt.Errorf("read audit log: %w", d.ClassifyError(err))
		}
		e.At, e.Event, e.Mode = sqlutil.TimeMicros(at), dialect.AuditEvent(event), modeOf(mode)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read audit log: %w", d.ClassifyError(err))
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}
