package sqldlm

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

func TestNewDetectsDialectAndChecksSchema(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.Open(t, kind)

			_, err := New(db.DB, Config{})
			require.ErrorIs(t, err, ErrSchema)
			require.ErrorContains(t, err, "sqldlm migrate up")

			require.NoError(t, Migrate(ctx, db.DB, nil))
			c, err := New(db.DB, Config{Owner: "conductor-3", TTL: 2 * time.Second})
			require.NoError(t, err)
			require.Equal(t, kind, c.dialect.Name(), "detected from the driver")
			require.Equal(t, "conductor-3", c.Owner())
			require.Equal(t, 2*time.Second, c.TTL())
			require.NoError(t, c.Close())
			require.NoError(t, c.Close(), "Close is idempotent")
			require.NoError(t, db.PingContext(ctx), "Close leaves the caller's *sql.DB open")
		})
	}
}

func TestNewRejectsOtherSchemaVersions(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			latest, err := migrations.Latest(db.Dialect)
			require.NoError(t, err)
			placeholder := map[string]string{"postgres": "$1"}[kind]
			if placeholder == "" {
				placeholder = "?"
			}

			_, err = db.ExecContext(ctx, `INSERT INTO sqldlm_schema_version (version_id, is_applied) VALUES (`+placeholder+`, true)`, latest+7)
			require.NoError(t, err)
			_, err = New(db.DB, Config{})
			require.ErrorIs(t, err, ErrSchema)
			require.ErrorContains(t, err, fmt.Sprintf("schema version %d, newer than the %d", latest+7, latest))
			require.ErrorContains(t, err, "upgrade sqldlm")

			_, err = db.ExecContext(ctx, `DELETE FROM sqldlm_schema_version WHERE version_id >= `+placeholder, latest)
			require.NoError(t, err)
			_, err = New(db.DB, Config{})
			require.ErrorIs(t, err, ErrSchema)
			require.ErrorContains(t, err, fmt.Sprintf("schema version %d and this sqldlm needs %d", latest-1, latest))
		})
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"NegativeTTL", Config{TTL: -time.Second}, "Config.TTL is negative"},
		{"TTLBelowMinimum", Config{TTL: 500 * time.Millisecond}, "Config.TTL 500ms is below the minimum 1s"},
		{"NegativeConnectTimeout", Config{ConnectTimeout: -1}, "Config.ConnectTimeout is negative"},
		{"OwnerTooLong", Config{Owner: strings.Repeat("o", 256)}, "Config.Owner is 256 bytes long: the limit is 255"},
		{"OwnerInvalidUTF8", Config{Owner: "host\xff"}, "Config.Owner \"host\\xff\" is not valid UTF-8"},
		{"OwnerNUL", Config{Owner: "a\x00b"}, "contains a NUL byte"},
		{"DialectContradictsDriver", Config{Dialect: postgres.Dialect()}, "Config.Dialect is postgres but the database's driver"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(db.DB, tt.cfg)
			require.Nil(t, c)
			require.ErrorContains(t, err, tt.want)
		})
	}
	t.Run("NilDB", func(t *testing.T) {
		t.Parallel()
		_, err := New(nil, Config{})
		require.ErrorContains(t, err, "needs a *sql.DB")
	})
}

func TestNewDefaults(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	c, err := New(db.DB, Config{})
	require.NoError(t, err)
	defer c.Close()
	require.Equal(t, TTLDefault, c.TTL())
	require.Contains(t, c.Owner(), "/", "hostname/pid")
}

// fakeDriver is a database/sql driver sqldlm does not know.
type fakeDriver struct{}

func (fakeDriver) Open(string) (driver.Conn, error) { return nil, driver.ErrBadConn }

type fakeConnector struct{}

func (fakeConnector) Connect(context.Context) (driver.Conn, error) { return nil, driver.ErrBadConn }
func (fakeConnector) Driver() driver.Driver                        { return fakeDriver{} }

func TestNewUnknownDriverListsKnownOnes(t *testing.T) {
	t.Parallel()
	db := sql.OpenDB(fakeConnector{})
	defer db.Close()
	_, err := New(db, Config{})
	require.ErrorContains(t, err, "cannot tell the dialect of database driver github.com/sqldlm/sqldlm.fakeDriver: set Config.Dialect")
	require.ErrorContains(t, err, "github.com/go-sql-driver/mysql (mysql.Dialect())")

	// With Config.Dialect set, an unknown driver is accepted and reaches the
	// schema check.
	_, err = New(db, Config{Dialect: mysql.Dialect(), ConnectTimeout: time.Second})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "cannot tell the dialect")
}

// A server that does not answer makes New fail within ConnectTimeout, with
// an error that names the host.
func TestNewUnreachableServer(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ driver, dsn string }{
		{"pgx", "postgres://u@192.0.2.1:5432/db?connect_timeout=60"},
		{"mysql", "u@tcp(192.0.2.1:3306)/db"},
	} {
		t.Run(tt.driver, func(t *testing.T) {
			t.Parallel()
			db, err := sql.Open(tt.driver, tt.dsn)
			require.NoError(t, err)
			defer db.Close()
			start := time.Now()
			_, err = New(db, Config{ConnectTimeout: 300 * time.Millisecond})
			require.Error(t, err)
			require.Contains(t, err.Error(), "192.0.2.1")
			require.Less(t, time.Since(start), 10*time.Second)
		})
	}
}
