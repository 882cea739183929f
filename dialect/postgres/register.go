package postgres

import "github.com/sqldlm/sqldlm/dialect"

// Importing this package makes sqldlm detect PostgreSQL for a *sql.DB opened
// with pgx's database/sql driver ("pgx", registered by
// github.com/jackc/pgx/v5/stdlib, which this package imports).
func init() { dialect.Register("github.com/jackc/pgx/v5/stdlib", Dialect) }
