// Package postgres is sqldlm's dialect for PostgreSQL 12 and later, through
// the pgx/v5 driver's database/sql adapter (github.com/jackc/pgx/v5/stdlib).
//
// sqldlm's tables live in the connection's current schema (the first schema
// of search_path that exists); point search_path at a schema of your choice,
// for example with "?search_path=locks" in the DSN, to keep them apart from
// the application's tables.
//
// The package owns its SQL: migrations/ holds the goose migrations, one file
// per schema version, embedded and handed over by [Dialect]().Migrations();
// schema/ holds the live result, one file per table, view and function,
// generated from them by go generate.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

// Dialect returns the PostgreSQL dialect. The value is stateless and safe
// for concurrent use.
func Dialect() dialect.Dialect { return postgresDialect{} }

type postgresDialect struct{}

var _ dialect.Testable = postgresDialect{}

func (postgresDialect) Name() string { return "postgres" }

// String returns the dialect's name, so that a Dialect prints as one.
func (d postgresDialect) String() string { return d.Name() }

func (postgresDialect) TimePrecision() time.Duration { return time.Microsecond }

// Now uses clock_timestamp(), which advances during a transaction, unlike
// now() which is frozen at the transaction's start.
func (d postgresDialect) Now(ctx context.Context, q dialect.Querier) (time.Time, error) {
	var t time.Time
	if err := q.QueryRowContext(ctx, `SELECT clock_timestamp()`).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("read server clock: %w", d.ClassifyError(err))
	}
	return t.UTC(), nil
}

// migrationLockClass is the first key of the advisory lock that serialises
// migrations (crc32 of "sqldlm"); the second key is hashtext(current_schema()),
// so migrations of different schemas in one database do not wait on each other.
const migrationLockClass int32 = -1356380542

func (d postgresDialect) LockMigrations(ctx context.Context, conn *sql.Conn) (func(context.Context) error, error) {
	var schema sql.NullString
	if err := conn.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return nil, fmt.Errorf("read current schema: %w", d.ClassifyError(err))
	}
	if !schema.Valid {
		return nil, errors.New("no current schema: search_path names no existing schema; create it or fix search_path")
	}
	// pg_advisory_lock waits in the server; pgx cancels the query when ctx ends.
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1, hashtext(current_schema()))`, migrationLockClass); err != nil {
		// A cancel that raced with the grant could leave the session lock held
		// on a pooled connection: drop the connection rather than return it.
		sqlutil.Discard(conn)
		return nil, fmt.Errorf("lock schema %q for migration: %w", schema.String, d.ClassifyError(err))
	}
	return func(ctx context.Context) error {
		var released bool
		err := conn.QueryRowContext(ctx, `SELECT pg_advisory_unlock($1, hashtext(current_schema()))`, migrationLockClass).Scan(&released)
		if err == nil && !released {
			err = errors.New("advisory lock was not held")
		}
		if err != nil {
			sqlutil.Discard(conn)
			return fmt.Errorf("unlock schema %q after migration: %w", schema.String, d.ClassifyError(err))
		}
		return nil
	}, nil
}

func (postgresDialect) QuoteIdentifier(name string) (string, error) {
	if err := dialect.ValidateIdentifier(name); err != nil {
		return "", err
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`, nil
}
