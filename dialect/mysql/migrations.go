package mysql

import (
	"embed"
	"io/fs"
)

// schema/ is generated from the migrations: go generate migrates a fresh
// database up and writes its catalogue there, one file per table, view and
// routine (TestSchemaMatchesMigrations fails when the two disagree).
//go:generate go test -count=1 -run ^TestSchemaMatchesMigrations$ . -args -update-schema

// The dialect's goose migrations, one file per schema version. Applied files
// are never edited: a change to the schema is a new file.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationsFS is migrations/ itself (fs.Sub fails only on an invalid path).
var migrationsFS, _ = fs.Sub(migrationFiles, "migrations")

// Migrations returns the files of migrations/: "00001_create_lock_tables.sql", ...
func (mysqlDialect) Migrations() fs.FS { return migrationsFS }
