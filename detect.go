package sqldlm

import (
	"database/sql"
	"fmt"
	"reflect"

	"github.com/sqldlm/sqldlm/dialect"
)

// The root package imports no concrete dialect: each dialect package
// registers itself for its database/sql driver (dialect.Register) in an init
// function, as database/sql drivers do. A program links only the dialects
// it imports, and with them only their drivers: one that imports
// dialect/postgres links neither go-sql-driver/mysql nor SQLite.

// knownDrivers maps the package path of each database/sql driver type that
// sqldlm has a dialect for to that dialect's name and the import that
// registers it, so that an error can name the import a program lacks, and a
// Config.Dialect that contradicts the driver is refused even when the
// driver's own dialect is not imported. It names packages; it imports none.
var knownDrivers = map[string]struct{ name, dialectImport string }{
	"github.com/jackc/pgx/v5/stdlib": {"postgres", "github.com/sqldlm/sqldlm/dialect/postgres"},
	"github.com/go-sql-driver/mysql": {"mysql", "github.com/sqldlm/sqldlm/dialect/mysql"},
	"modernc.org/sqlite":             {"sqlite", "github.com/sqldlm/sqldlm/dialect/sqlite"},
}

const knownDriversHelp = "github.com/jackc/pgx/v5/stdlib (postgres.Dialect()), " +
	"github.com/go-sql-driver/mysql (mysql.Dialect()), modernc.org/sqlite (sqlite.Dialect())"

// driverPkgPath returns the import path of the package that declares the
// type of db's driver, and the type's qualified name.
func driverPkgPath(db *sql.DB) (pkgPath, typeName string) {
	t := reflect.TypeOf(db.Driver())
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.PkgPath(), t.PkgPath() + "." + t.Name()
}

// detectDialect picks the registered dialect of db's driver, or nil if no
// dialect is registered for it.
func detectDialect(db *sql.DB) (d dialect.Dialect, driverPkg, driverName string) {
	driverPkg, driverName = driverPkgPath(db)
	if newDialect, ok := dialect.Lookup(driverPkg); ok {
		return newDialect(), driverPkg, driverName
	}
	return nil, driverPkg, driverName
}

// resolveDialect returns configured, or the detected dialect when configured
// is nil. It refuses a configured dialect that contradicts the driver.
func resolveDialect(db *sql.DB, configured dialect.Dialect) (dialect.Dialect, error) {
	detected, driverPkg, driverName := detectDialect(db)
	known, isKnown := knownDrivers[driverPkg]
	switch {
	case configured == nil && detected == nil && isKnown:
		return nil, fmt.Errorf("sqldlm: no dialect registered for database driver %s: import _ %q in the program, or set Config.Dialect to %s.Dialect()",
			driverName, known.dialectImport, known.name)
	case configured == nil && detected == nil:
		return nil, fmt.Errorf("sqldlm: cannot tell the dialect of database driver %s: set Config.Dialect; known drivers: %s, each detected once the program imports its dialect package",
			driverName, knownDriversHelp)
	case configured == nil:
		return detected, nil
	case detected != nil && detected.Name() != configured.Name():
		return nil, fmt.Errorf("sqldlm: Config.Dialect is %s but the database's driver %s is %s: use %s.Dialect() or leave Config.Dialect nil",
			configured.Name(), driverName, detected.Name(), detected.Name())
	case detected == nil && isKnown && known.name != configured.Name():
		return nil, fmt.Errorf("sqldlm: Config.Dialect is %s but the database's driver %s is %s: use %s.Dialect() (import %q)",
			configured.Name(), driverName, known.name, known.name, known.dialectImport)
	}
	return configured, nil
}

// DetectDialect returns the dialect of db's driver (pgx/v5/stdlib,
// go-sql-driver/mysql or modernc.org/sqlite), or an error. A dialect is
// detected only if the program imports its package (dialect/postgres,
// dialect/mysql or dialect/sqlite), which registers it; the error for a
// known driver whose dialect is not imported names the import to add.
func DetectDialect(db *sql.DB) (dialect.Dialect, error) {
	return resolveDialect(db, nil)
}
