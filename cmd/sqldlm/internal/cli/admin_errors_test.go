package cli

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// On a database that was never migrated, every command that uses sqldlm's
// tables says so in one line, naming where it looked (the PostgreSQL
// database and schema, the MySQL database, the SQLite file) and what to
// run; none shows the database's "undefined table".
func TestCommandsOnUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	commands := [][]string{{"locks"}, {"leases"}, {"break", "node/1", "--yes"}, {"log"}, {"log", "on"}, {"reap"}}
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, kind)
			var where string
			switch kind {
			case testdb.Postgres:
				u, err := url.Parse(db.DSN)
				require.NoError(t, err)
				where = `PostgreSQL database "` + strings.TrimPrefix(u.Path, "/") + `", schema "` + u.Query().Get("search_path") + `"`
			case testdb.MySQL:
				u, err := url.Parse(db.DSN)
				require.NoError(t, err)
				where = `MySQL database "` + strings.TrimPrefix(u.Path, "/") + `"`
			case testdb.SQLite:
				where = "sqlite file " + strings.TrimPrefix(db.DSN, "sqlite://")
			}
			for _, args := range commands {
				code, out, errOut := run(t, append(args, "--dsn", db.DSN)...)
				require.Equal(t, ExitError, code, "%v", args)
				require.Empty(t, out, "%v", args)
				// What the command prints has the DSN's password scrubbed
				// out of it wherever it occurs (CI's is "sqldlm").
				require.Equal(t, "sqldlm "+args[0]+": "+dsn.Scrub("not migrated: sqldlm's tables are not in "+where+
					": run `sqldlm migrate up` with the same --dsn", db.DSN)+"\n", errOut, "%v", args)
			}
		})
	}
}

// A PostgreSQL search_path naming no schema that exists gets its own
// message, not "not migrated".
func TestCommandsWithMissingPostgresSchema(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", "sqldlm_no_such_schema")
	u.RawQuery = q.Encode()
	code, _, errOut := run(t, "locks", "--dsn", u.String())
	require.Equal(t, ExitError, code)
	require.Contains(t, errOut, `the search_path "sqldlm_no_such_schema" names no schema that exists in PostgreSQL database`)
	require.Contains(t, errOut, "create the schema (CREATE SCHEMA), or fix search_path in the DSN")
}

// Commands that only read or change sqldlm's tables never create an SQLite
// file; migrate up does.
func TestCommandsDoNotCreateSQLiteFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "locks.db")
	for _, args := range [][]string{{"locks"}, {"leases"}, {"log"}, {"reap"}, {"break", "x", "--yes"},
		{"migrate", "status"}, {"run", "--lock", "x", "--dsn", "sqlite://" + path, "--", "true"}} {
		if args[0] != "run" {
			args = append(args, "--dsn", "sqlite://"+path)
		}
		code, _, errOut := run(t, args...)
		require.Equal(t, ExitError, code, "%v", args)
		require.Contains(t, errOut, "no SQLite database at "+path+": the file does not exist (`sqldlm migrate up` creates it)", "%v", args)
		_, err := os.Stat(path)
		require.ErrorIs(t, err, os.ErrNotExist, "%v created the file", args)
	}
	code, _, errOut := run(t, "migrate", "up", "--dsn", "sqlite://"+path)
	require.Equal(t, ExitOK, code, errOut)
	code, _, errOut = run(t, "locks", "--dsn", "sqlite://"+path)
	require.Equal(t, ExitOK, code, errOut)
}
