package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/migrations"
)

// Migrate applies sqldlm's pending schema migrations to db's current schema
// (PostgreSQL), database (MySQL) or file (SQLite). d may be nil to detect
// the dialect from db's driver.
//
// Applied versions are recorded in sqldlm's own table, sqldlm_schema_version;
// the application's goose_db_version is never touched. Several processes may
// call Migrate at once: they take turns, and those that come later find
// nothing to do. Migrate never closes db.
func Migrate(ctx context.Context, db *sql.DB, d dialect.Dialect) error {
	d, err := resolveDialect(db, d)
	if err != nil {
		return err
	}
	if _, err := migrations.Up(ctx, db, d); err != nil {
		return fmt.Errorf("sqldlm: migrate: %w", err)
	}
	return nil
}

// checkSchema returns an error wrapping ErrSchema unless db's schema is at
// exactly the version this build uses.
func checkSchema(ctx context.Context, db *sql.DB, d dialect.Dialect) error {
	want, err := migrations.Latest(d)
	if err != nil {
		return err
	}
	have, err := migrations.Current(ctx, db, d)
	switch {
	case errors.Is(err, migrations.ErrNotMigrated):
		return fmt.Errorf("%w: sqldlm's tables are not in this %s schema: run `sqldlm migrate up --dsn DSN` or call sqldlm.Migrate first",
			ErrSchema, d.Name())
	case err != nil:
		return fmt.Errorf("sqldlm: check schema version: %w", err)
	case have < want:
		return fmt.Errorf("%w: the database is at schema version %d and this sqldlm needs %d: run `sqldlm migrate up --dsn DSN` or call sqldlm.Migrate",
			ErrSchema, have, want)
	case have > want:
		return fmt.Errorf("%w: the database is at schema version %d, newer than the %d this sqldlm knows: upgrade sqldlm in this service",
			ErrSchema, have, want)
	}
	return nil
}
