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
		{"NoScheme", "root@tcp(127.0.0.1:3306)/test", "has no scheme: start it with postgres://"},
		{"UnknownSchemeListsValidOnes", "redis://localhost:6379", `unknown DSN scheme "redis": use postgres:// (or postgresql://), mysql://, sqlite://`},
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
