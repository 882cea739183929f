package postgres

// The audit log's setting and its rows (schema version 3). The functions of
// the migration write the rows; these methods are plain SQL, one statement
// each.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sqldlm/sqldlm/dialect"
)

var _ dialect.Auditor = postgresDialect{}

func (d postgresDialect) AuditSettings(ctx context.Context, db *sql.DB) (*dialect.AuditSettings, error) {
	var (
		s           dialect.AuditSettings
		retentionUs int64
	)
	err := db.QueryRowContext(ctx, `SELECT audit, audit_retention_us FROM sqldlm_settings WHERE id = 1`).Scan(&s.Enabled, &retentionUs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errors.New("sqldlm_settings has no row (id = 1): migrate the schema down to version 2 and up again")
	}
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	s.Retention = time.Duration(retentionUs) * time.Microsecond
	return &s, nil
}

// SetAuditSettings writes the one settings row (and creates it, should it
// be missing).
func (d postgresDialect) SetAuditSettings(ctx context.Context, db *sql.DB, s *dialect.AuditSettings) error {
	if s == nil {
		return errors.New("SetAuditSettings: no settings")
	}
	if s.Retention < time.Second {
		return fmt.Errorf("audit retention %v: must be at least 1s", s.Retention)
	}
	_, err := db.ExecContext(ctx, `INSERT INTO sqldlm_settings (id, audit, audit_retention_us) VALUES (1, $1, $2)
		ON CONFLICT (id) DO UPDATE SET audit = excluded.audit, audit_retention_us = excluded.audit_retention_us`,
		s.Enabled, s.Retention.Microseconds())
	return d.ClassifyError(err)
}

// AuditLog selects the newest f.Limit rows (all if not positive) among
// those of f.Name (any if empty) written within f.Since of the server's
// clock (any time if not positive), and returns them oldest first. The
// statement is put together from constant parts only.
func (d postgresDialect) AuditLog(ctx context.Context, db *sql.DB, f *dialect.AuditFilter) ([]dialect.AuditEntry, error) {
	if f == nil {
		f = &dialect.AuditFilter{}
	}
	var (
		where []string
		args  []any
	)
	if f.Name != "" {
		// Names are text: one PostgreSQL cannot store matches no row.
		if !utf8.ValidString(f.Name) || strings.ContainsRune(f.Name, 0) {
			return nil, nil
		}
		args = append(args, f.Name)
		where = append(where, fmt.Sprintf("name = $%d", len(args)))
	}
	if f.Since > 0 {
		args = append(args, f.Since.Microseconds())
		where = append(where, fmt.Sprintf("at >= clock_timestamp() - $%d::bigint * interval '1 microsecond'", len(args)))
	}
	query := `SELECT id, at, event, name, owner, lease_id, token, mode, payload, detail FROM sqldlm_audit`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, ` AND `)
	}
	query += ` ORDER BY id DESC`
	if f.Limit > 0 {
		args = append(args, int64(f.Limit))
		query += fmt.Sprintf(" LIMIT $%d", len(args))
	}
	rows, err := db.QueryContext(ctx, `SELECT * FROM (`+query+`) s ORDER BY id`, args...)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	defer rows.Close()
	var out []dialect.AuditEntry
	for rows.Next() {
		var (
			e           dialect.AuditEntry
			event, mode string
		)
		if err := rows.Scan(&e.ID, &e.At, &event, &e.Name, &e.Owner, &e.LeaseID, &e.Token, &mode, &e.Payload, &e.Detail); err != nil {
			return nil, d.ClassifyError(err)
		}
		if len(mode) != 1 {
			return nil, fmt.Errorf("audit row %d: unexpected mode %q", e.ID, mode)
		}
		e.At, e.Event, e.Mode = e.At.UTC(), dialect.AuditEvent(event), dialect.Mode(mode[0])
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, d.ClassifyError(err)
	}
	return out, nil
}
