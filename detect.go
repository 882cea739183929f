package sqldlm

import (
	"database/sql"
	"fmt"
	"reflect"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/dialect/sqlite"
)

// knownDrivers maps the package path of a database/sql driver type to its
// dialect. Matching on the path keeps drivers out of the import graph: an
// application that uses PostgreSQL does not link SQLite.
var knownDrivers = map[string]func() dialect.Dialect{
	"github.com/jackc/pgx/v5/stdlib": postgres.Dialect,
	"github.com/go-sql-driver/mysql": mysql.Dialect,
	"modernc.org/sqlite":             sqlite.Dialect,
}

const knownDriversHelp = "github.com/jackc/pgx/v5/stdlib (postgres.Dialect()), " +
	"github.com/go-sql-driver/mysql (mysql.Dialect()), modernc.org/sqlite (sqlite.Dialect())"

// detectDialect picks the dialect of db's driver, or nil if the driver is
// not one sqldlm knows.
func detectDialect(db *sql.DB) (dialect.Dialect, string) {
	t := reflect.TypeOf(db.Driver())
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if newDialect, ok := knownDrivers[t.PkgPath()]; ok {
		return newDialect(), t.String()
	}
	return nil, t.PkgPath() + "." + t.Name()
}

// resolveDialect returns configured, or the detected dialect when configured
// is nil. It refuses a configured dialect that contradicts the driver.
func resolveDialect(db *sql.DB, configured dialect.Dialect) (dialect.Dialect, error) {
	detected, driverName := detectDialect(db)
	switch {
	case configured == nil && detected == nil:
		return nil, fmt.Errorf("sqldlm: cannot tell the dialect of database driver %s: set Config.Dialect; known drivers: %s",
			driverName, knownDriversHelp)
	case configured == nil:
		return detected, nil
	case detected != nil && detected.Name() != configured.Name():
		return nil, fmt.Errorf("sqldlm: Config.Dialect is %s but the database's driver %s is %s: use %s.Dialect() or leave Config.Dialect nil",
			configured.Name(), driverName, detected.Name(), detected.Name())
	}
	return configured, nil
}

// DetectDialect returns the dialect of db's driver (pgx/v5/stdlib,
// go-sql-driver/mysql or modernc.org/sqlite), or an error that lists the
// drivers sqldlm knows.
func DetectDialect(db *sql.DB) (dialect.Dialect, error) {
	return resolveDialect(db, nil)
}
