package dsn_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// A database that cannot be reached gets an error that says why: a refused
// login, no such database, nothing listening; never just "does not answer"
// for those.
func TestOpenSaysWhy(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, kind)
			with := func(f func(u *url.URL)) string {
				u, err := url.Parse(db.DSN)
				require.NoError(t, err)
				f(u)
				return u.String()
			}
			badLogin := with(func(u *url.URL) {
				if kind == testdb.Postgres {
					u.User = url.User("sqldlm_no_such_role") // trust auth: only an unknown role is refused
				} else {
					u.User = url.UserPassword(u.User.Username(), "sqldlm-wrong-password")
				}
			})
			noDB := with(func(u *url.URL) { u.Path = "/sqldlm_no_such_database" })
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			closedPort := l.Addr().String()
			require.NoError(t, l.Close())
			refused := with(func(u *url.URL) { u.Host = closedPort })

			for _, tc := range []struct{ name, raw, want string }{
				{"login", badLogin, "refused the login of user"},
				{"database", noDB, `has no database "sqldlm_no_such_database"`},
				{"refused", refused, "nothing accepts " + kind + " connections at " + closedPort + " (connection refused)"},
			} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, _, err := dsn.Open(ctx, tc.raw)
				cancel()
				require.ErrorContains(t, err, tc.want, tc.name)
				require.NotContains(t, err.Error(), "does not answer", tc.name)
				require.NotContains(t, err.Error(), "sqldlm-wrong-password", tc.name)
			}
		})
	}
}

// An unknown host is named as such.
func TestOpenUnknownHost(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, err := dsn.Open(ctx, "mysql://root@sqldlm-no-such-host.invalid:3306/test")
	require.Error(t, err)
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) {
		t.Skipf("the resolver did not answer for .invalid (%v); nothing to check", err)
	}
	require.ErrorContains(t, err, `unknown host "sqldlm-no-such-host.invalid"`)
}

// OpenExisting never creates an SQLite file; Open does, and says which
// file it could not create.
func TestOpenSQLiteFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "locks.db")
	_, _, err := dsn.OpenExisting(ctx, "sqlite://"+path)
	require.ErrorContains(t, err, "no SQLite database at "+path+": the file does not exist (`sqldlm migrate up` creates it)")
	_, statErr := os.Stat(path)
	require.ErrorIs(t, statErr, os.ErrNotExist, "OpenExisting created the file")

	db, _, err := dsn.Open(ctx, "sqlite://"+path)
	require.NoError(t, err)
	require.NoError(t, db.Close())
	db, _, err = dsn.OpenExisting(ctx, "sqlite://"+path)
	require.NoError(t, err, "an existing file opens")
	require.NoError(t, db.Close())

	missingDir := filepath.Join(dir, "no-such-dir", "locks.db")
	_, _, err = dsn.Open(ctx, "sqlite://"+missingDir)
	require.ErrorContains(t, err, "cannot open the SQLite database "+missingDir+": its directory must exist")
}
