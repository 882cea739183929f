package cli

// The CLI speaks all three databases: importing the dialects registers them
// for sqldlm's dialect detection (and registers the pgx and mysql drivers;
// internal/dsn imports the SQLite driver).
import (
	_ "github.com/sqldlm/sqldlm/dialect/mysql"
	_ "github.com/sqldlm/sqldlm/dialect/postgres"
	_ "github.com/sqldlm/sqldlm/dialect/sqlite"
)
