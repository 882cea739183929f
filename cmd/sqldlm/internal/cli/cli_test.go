package cli

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

// ttyBuffer is a stdout that says it is a terminal.
type ttyBuffer struct{ bytes.Buffer }

func (*ttyBuffer) IsTerminal() bool { return true }

// runTTY is run with stdout a terminal.
func runTTY(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out ttyBuffer
	var errOut bytes.Buffer
	code = Main(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestMigrateUpStatusDown(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, kind)
			latest, err := migrations.Latest(db.Dialect)
			require.NoError(t, err)

			atLatest := fmt.Sprintf("the schema is at version %d", latest)
			code, out, errOut := run(t, "migrate", "up", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, out, "00001_create_lock_tables.sql")
			require.Contains(t, out, atLatest)

			code, out, _ = run(t, "migrate", "up", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			require.Contains(t, out, "nothing applied: "+atLatest)

			code, out, _ = run(t, "migrate", "status", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			require.Regexp(t, `1\s+00001_create_lock_tables.sql\s+applied\s+\d{4}-`, out)

			code, _, errOut = run(t, "migrate", "down", "--dsn", db.DSN)
			require.Equal(t, ExitUsage, code, "down without --yes is refused")
			require.Contains(t, errOut, "add --yes")
			v, err := migrations.Current(context.Background(), db, db.Dialect)
			require.NoError(t, err)
			require.Equal(t, latest, v, "a refused down changed nothing")

			code, out, errOut = run(t, "migrate", "down", "--yes", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, out, fmt.Sprintf("the schema is at version %d", latest-1), "down is one step")

			code, out, errOut = run(t, "migrate", "down", "--yes", "--to", "0", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, out, "the schema is at version 0")

			code, out, _ = run(t, "migrate", "status", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			require.Regexp(t, `1\s+00001_create_lock_tables.sql\s+pending\s+-`, out)
		})
	}
}

func TestMigrateDSNFromEnvironment(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	t.Setenv("SQLDLM_DSN", db.DSN)
	code, out, errOut := run(t, "migrate", "up")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, out, "applied")
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"UnknownCommand", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"MissingAction", []string{"migrate", "--dsn", "sqlite:///tmp/x.db"}, "missing action: use up, down or status"},
		{"UnknownAction", []string{"migrate", "sideways", "--dsn", "sqlite:///tmp/x.db"}, `unknown action "sideways"`},
		{"MissingDSN", []string{"migrate", "up", "--dsn", ""}, "pass --dsn DSN or set SQLDLM_DSN"},
		{"UnknownSchemeListsValidOnes", []string{"migrate", "status", "--dsn", "redis://localhost"}, `has the unknown scheme "redis"; the forms sqldlm reads: postgres://`},
		{"UnknownFlag", []string{"migrate", "up", "--nope"}, "flag provided but not defined: -nope"},
		{"NegativeTTL", []string{"run", "--dsn", "sqlite:///tmp/x.db", "--lock", "x", "--ttl", "-5s", "--", "true"},
			"--ttl -5s: the lease time-to-live must be at least 1s (default 15s)"},
		{"DurationWithoutUnit", []string{"run", "--dsn", "sqlite:///tmp/x.db", "--lock", "x", "--wait", "30", "--", "true"},
			`invalid value "30" for flag -wait: "30" has no unit: write 30s, 30m, 30h or 30d`},
		{"NotADuration", []string{"log", "--dsn", "sqlite:///tmp/x.db", "--since", "yesterday"},
			`"yesterday" is not a duration: write it as 500ms, 30s, 5m, 2h or 1d`},
		{"ExtraArgument", []string{"locks", "--dsn", "sqlite:///tmp/x.db", "node/1"}, `unexpected argument "node/1" (sqldlm locks takes only flags)`},
		{"ExtraArgumentOfBreak", []string{"break", "node/1", "node/2", "--dsn", "sqlite:///tmp/x.db"}, `unexpected argument "node/2": break takes one NAME`},
		{"RunFlagAfterCommand", []string{"run", "--dsn", "sqlite:///tmp/x.db", "backup.sh", "--lock", "cron/backup"},
			`--lock comes after the command "backup.sh": put run's flags first and the command after --`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, _, errOut := run(t, tt.args...)
			require.Equal(t, ExitUsage, code)
			require.Contains(t, errOut, tt.want)
		})
	}
}

// Days are a duration unit; Go's units still work.
func TestParseDuration(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{"1d": 24 * time.Hour, "1.5d": 36 * time.Hour, "90m": 90 * time.Minute, "0": 0} {
		got, err := parseDuration(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"-1d", "d", "1w"} {
		_, err := parseDuration(in)
		require.Error(t, err, in)
	}
}

// --version names the command's and the library's versions and the schema
// version of each dialect.
func TestVersion(t *testing.T) {
	t.Parallel()
	code, out, _ := run(t, "--version")
	require.Equal(t, ExitOK, code)
	require.Regexp(t, `^sqldlm \S+ \(library \S+, go`, out)
	for _, d := range []string{"postgres", "mysql", "sqlite"} {
		require.Regexp(t, `schema version [1-9][0-9]* for `+d, out)
	}
}

func TestUnreachableDatabaseFails(t *testing.T) {
	t.Parallel()
	code, _, errOut := run(t, "migrate", "status", "--timeout", "300ms", "--dsn", "postgres://u@192.0.2.1:5432/db")
	require.Equal(t, ExitError, code)
	require.Contains(t, errOut, "192.0.2.1")
}

func TestHelp(t *testing.T) {
	t.Parallel()
	code, out, _ := run(t, "help")
	require.Equal(t, ExitOK, code)
	for name := range commands {
		require.Contains(t, out, "  "+name+" ")
	}
	code, _, errOut := run(t, "migrate", "--help")
	require.Equal(t, ExitOK, code)
	require.Contains(t, errOut, "Usage: sqldlm migrate up|down|status")
}

func TestDemo(t *testing.T) {
	t.Parallel()
	code, out, errOut := run(t, "demo")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, out, "summary: 3 workers")
	require.Contains(t, out, " 0 overlapping exclusive sections")
	require.Contains(t, out, "killed holder's lock was taken over")
	require.True(t, strings.Contains(out, "took over volume/1 from the killed holder"), out)
}

func TestReapFreesDeadLeases(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			require.NoError(t, db.Dialect.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: 7, Owner: "dead", TTL: 300 * time.Millisecond}))
			res, err := db.Dialect.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "node/1", LeaseID: 7, RequestID: 1, Mode: dialect.Exclusive})
			require.NoError(t, err)
			require.Equal(t, dialect.Granted, res.Status)
			require.Eventually(t, func() bool {
				code, out, errOut := run(t, "reap", "--dsn", db.DSN)
				require.Equal(t, ExitOK, code, errOut)
				return strings.Contains(out, "reaped 1 dead lease(s), 1 hold(s)") && strings.Contains(out, `freed ["node/1"]`)
			}, 10*time.Second, 10*time.Millisecond)
			code, out, _ := run(t, "reap", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			require.Contains(t, out, "reaped 0 dead lease(s)")
		})
	}
}
