package dialect

import (
	"fmt"
	"sync"
)

// Registration, in the style of database/sql's drivers: each dialect package
// registers itself in an init function for the database/sql driver it
// speaks, so the root package detects a dialect without importing it, and a
// program links only the dialects (and drivers) it imports.

var (
	registryMu sync.RWMutex
	registry   = map[string]func() Dialect{}
)

// Register makes newDialect the dialect of the database/sql driver whose
// driver type (the value of [database/sql.DB.Driver]) is declared in the
// package with import path driverPkgPath, e.g. "github.com/jackc/pgx/v5/stdlib".
// The dialect packages shipped with sqldlm call it from their init functions;
// importing one (for its side effect, as with a database/sql driver) is what
// lets sqldlm.New detect it.
//
// Register panics if newDialect is nil or if driverPkgPath is registered
// twice, as [database/sql.Register] does.
func Register(driverPkgPath string, newDialect func() Dialect) {
	if newDialect == nil {
		panic("dialect: Register of " + driverPkgPath + ": newDialect is nil")
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[driverPkgPath]; dup {
		panic(fmt.Sprintf("dialect: Register called twice for driver package %s", driverPkgPath))
	}
	registry[driverPkgPath] = newDialect
}

// Lookup returns the constructor registered for the driver package
// driverPkgPath, and whether there is one.
func Lookup(driverPkgPath string) (newDialect func() Dialect, ok bool) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	newDialect, ok = registry[driverPkgPath]
	return newDialect, ok
}
