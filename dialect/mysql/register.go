package mysql

import "github.com/sqldlm/sqldlm/dialect"

// Importing this package makes sqldlm detect MySQL/MariaDB for a *sql.DB
// opened with github.com/go-sql-driver/mysql ("mysql", which this package
// imports).
func init() { dialect.Register("github.com/go-sql-driver/mysql", Dialect) }
