package sqlite

import "github.com/sqldlm/sqldlm/dialect"

// Importing this package makes sqldlm detect SQLite for a *sql.DB opened with
// modernc.org/sqlite ("sqlite"). This package does not import the driver:
// the program imports it, as it would anyway to open the database.
func init() { dialect.Register("modernc.org/sqlite", Dialect) }
