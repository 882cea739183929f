package dsn

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParse(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name, raw                        string
		dialect, driver, driverDSN, host string
	}{
		{"Postgres", "postgres://u:p@db.example:6432/app?sslmode=disable", "postgres", "pgx", "postgres://u:p@db.example:6432/app?sslmode=disable", "db.example:6432"},
		{"PostgresDefaultPort", "postgresql://u@db.example/app", "postgres", "pgx", "postgresql://u@db.example/app", "db.example:5432"},
		{"MySQL", "mysql://root:s%40cret@10.0.0.5:3307/app?loc=Local", "mysql", "mysql", "root:s@cret@tcp(10.0.0.5:3307)/app?loc=Local", "10.0.0.5:3307"},
		{"MySQLDefaultPort", "mysql://root@db/app", "mysql", "mysql", "root@tcp(db:3306)/app", "db:3306"},
		{"MySQLDriverForm", "root:pw@tcp(127.0.0.1:3306)/test?parseTime=true", "mysql", "mysql", "root:pw@tcp(127.0.0.1:3306)/test?parseTime=true", "127.0.0.1:3306"},
		{"MySQLDriverFormAfterScheme", "mysql://root@tcp(db:3307)/app", "mysql", "mysql", "root@tcp(db:3307)/app", "db:3307"},
		{"MariaDBDriverFormDefaultAddress", "mariadb://root@/app", "mysql", "mysql", "root@tcp(127.0.0.1:3306)/app", "127.0.0.1:3306"},
		{"MySQLDriverFormSocket", "u@unix(/run/mysqld/mysqld.sock)/app", "mysql", "mysql", "u@unix(/run/mysqld/mysqld.sock)/app", "/run/mysqld/mysqld.sock"},
		{"MariaDBURL", "mariadb://root@db/app", "mysql", "mysql", "root@tcp(db:3306)/app", "db:3306"},
		{"PostgresKeywords", "host=db.example port=6432 dbname=app user=u sslmode=disable", "postgres", "pgx", "host=db.example port=6432 dbname=app user=u sslmode=disable", "db.example:6432"},
		{"PostgresKeywordsSocket", "host=/var/run/postgresql dbname=app", "postgres", "pgx", "host=/var/run/postgresql dbname=app", "/var/run/postgresql"},
		{"PostgresMultiHost", "postgres://u@h1:5432,h2:5433/app", "postgres", "pgx", "postgres://u@h1:5432,h2:5433/app", "h1:5432,h2:5433"},
		{"SQLiteAbsolute", "sqlite:///tmp/x.db", "sqlite", "sqlite", "file:/tmp/x.db?_pragma=journal_mode%28WAL%29&_pragma=busy_timeout%2810000%29", "/tmp/x.db"},
		{"SQLiteRelativeKeepsPragma", "sqlite://data/x.db?_pragma=busy_timeout(50)", "sqlite", "sqlite", "file:data/x.db?_pragma=busy_timeout%2850%29&_pragma=journal_mode%28WAL%29", "data/x.db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d, err := Parse(tt.raw)
			require.NoError(t, err)
			require.Equal(t, tt.dialect, d.Dialect)
			require.Equal(t, tt.driver, d.DriverName)
			require.Equal(t, tt.driverDSN, d.DriverDSN)
			require.Equal(t, tt.host, d.Host)
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()

	tests := []struct{ name, raw, want string }{
		{"NoScheme", "root@db.example/test", `has no scheme and is not in go-sql-driver's or libpq's form; did you mean postgres://root@db.example/test or mysql://root@db.example/test?`},
		{"NoSchemeMySQLPort", "root@db.example:3306/test", `did you mean mysql://root@db.example:3306/test or root@tcp(db.example:3306)/test?`},
		{"NoSchemePostgresPort", "u@db.example:5432/app", `did you mean postgres://u@db.example:5432/app?`},
		{"NoSchemeSQLiteFile", "./data/locks.db", `did you mean sqlite://data/locks.db?`},
		{"SchemeAlias", "pgsql://u@db/app", `has the unknown scheme "pgsql"; did you mean postgres://u@db/app?`},
		{"UnknownSchemeListsForms", "redis://localhost:6379", `has the unknown scheme "redis"; the forms sqldlm reads: postgres://user:pass@host:5432/db (or postgresql://); libpq's`},
		{"DriverFormWithoutDatabase", "root@tcp(127.0.0.1:3306)/", "names no database"},
		{"BadDriverForm", "root@tcp(127.0.0.1:3306)/db?parseTime=maybe", "go-sql-driver DSN"},
		{"BadKeywordForm", "host=db port=many", "PostgreSQL DSN"},
		{"MySQLWithoutDatabase", "mysql://root@localhost:3306/", "names no database"},
		{"SQLiteWithoutFile", "sqlite://", "names no file"},
		{"BadMySQLParameter", "mysql://root@h/db?parseTime=maybe", "mysql DSN parameters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse(tt.raw)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestParseErrorHidesPassword(t *testing.T) {
	t.Parallel()
	_, err := Parse("mysql://root:hunter2@h:3306/db?parseTime=maybe")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
	_, err = Parse("mysql://root:hunter2@h:bad port/db")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "hunter2")
}

// A server that does not answer gets an error naming its host, within the
// caller's deadline. The address is TEST-NET-1 (RFC 5737), never routed, so
// the connect hangs until the context ends.
func TestOpenUnreachableNamesHostWithinDeadline(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		"postgres://u@192.0.2.1:5432/db?connect_timeout=60",
		"mysql://u@192.0.2.1:3306/db",
	} {
		t.Run(strings.SplitN(raw, ":", 2)[0], func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, _, err := Open(ctx, raw)
			require.Error(t, err)
			require.Contains(t, err.Error(), "192.0.2.1")
			require.Less(t, time.Since(start), 10*time.Second, "Open must give up when its context ends")
		})
	}
}
