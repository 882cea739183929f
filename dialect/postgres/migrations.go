package postgres

import (
	"embed"
	"io/fs"
)

// The dialect's goose migrations, one file per schema version. Applied files
// are never edited: a change to the schema is a new file. The live schema
// they build is in schema/, one file per table, view and routine.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationsFS is migrations/ itself (fs.Sub fails only on an invalid path).
var migrationsFS, _ = fs.Sub(migrationFiles, "migrations")

// Migrations returns the files of migrations/: "00001_create_lock_tables.sql", ...
func (postgresDialect) Migrations() fs.FS { return migrationsFS }
