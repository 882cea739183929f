package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// fuzzCommands are the commands FuzzCommandLine runs: those that only read
// or change sqldlm's tables (not run, which starts processes, nor demo and
// bench, which run for seconds).
var fuzzCommands = []string{"locks", "leases", "break", "log", "reap", "migrate"}

// FuzzCommandLine runs the database commands with fuzzed flags and
// arguments (one per line of args) against a migrated SQLite database
// given in SQLDLM_DSN, in which a client holds a lock with a hostile name.
// No input panics; every run ends with exit code 0, 1 or 2, a usage error
// (2) says what is wrong, and every string argument (names, prefixes,
// owners) is data: sqldlm's tables are still there afterwards.
func FuzzCommandLine(f *testing.F) {
	const hostile = "'; DROP TABLE sqldlm_locks; --"
	for _, seed := range []struct {
		cmd  uint8
		args string
	}{
		{0, "--prefix\n" + hostile},
		{0, "--prefix\na%\n--output\njson"},
		{0, "--owner\n\" OR 1=1 --\n--output\ntable"},
		{0, "--watch\n--interval\n1ms"},
		{0, "--output\nyaml"},
		{0, "--interval\n-1s\n--watch"},
		{1, "--output\njson"},
		{1, "extra"},
		{2, hostile + "\n--yes"},
		{2, "--yes\n--output\njson\n" + hostile},
		{2, "a%\n--owner\n$1\n--yes"},
		{2, ""},
		{2, "\xff\x00\n--yes"},
		{3, "--name\n" + hostile + "\n--since\n1h\n--limit\n5"},
		{3, "on\n--retention\n1s"},
		{3, "on\n--retention\n-5h"},
		{3, "off"},
		{3, "--limit\n-1\n--since\nforever"},
		{4, "--every\n1ms"},
		{4, "--batch\n0\n--idle-after\n-1s"},
		{5, "status"},
		{5, "up\n--timeout\n1ns"},
		{5, "sideways"},
		{5, "--to\n99999999999999999999"},
	} {
		f.Add(seed.cmd, seed.args)
	}

	db := testdb.OpenMigrated(f, testdb.SQLite)
	old, had := os.LookupEnv("SQLDLM_DSN")
	os.Setenv("SQLDLM_DSN", db.DSN)
	f.Cleanup(func() {
		if had {
			os.Setenv("SQLDLM_DSN", old)
		} else {
			os.Unsetenv("SQLDLM_DSN")
		}
	})
	c, err := sqldlm.New(testdb.Reopen(f, testdb.SQLite, db.DSN).DB, sqldlm.Config{Owner: "o'; --", TTL: time.Minute})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { c.Close() })
	if _, err := c.TryLock(context.Background(), hostile, sqldlm.Exclusive); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, cmd uint8, joined string) {
		name := fuzzCommands[int(cmd)%len(fuzzCommands)]
		lower := strings.ToLower(joined)
		if len(joined) > 2000 || strings.Contains(lower, "dsn") || strings.Contains(lower, "://") ||
			(name == "migrate" && strings.Contains(lower, "down")) || strings.Contains(lower, "cpuprofile") {
			t.Skip("the command line would leave the test's database")
		}
		args := []string{name}
		if joined != "" {
			args = append(args, strings.Split(joined, "\n")...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		var out, errOut bytes.Buffer
		code := Main(ctx, args, strings.NewReader(""), &out, &errOut)
		switch code {
		case ExitOK, ExitError:
		case ExitUsage:
			if !strings.Contains(errOut.String(), "sqldlm "+name) {
				t.Fatalf("%q: usage error without a message naming the command: %q", args, errOut.String())
			}
		default:
			t.Fatalf("%q: exit code %d", args, code)
		}
		for _, table := range []string{"sqldlm_locks", "sqldlm_holders", "sqldlm_leases", "sqldlm_waiters"} {
			var n int
			if err := db.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM `+table).Scan(&n); err != nil {
				t.Fatalf("%q: %s is gone: %v", args, table, err)
			}
		}
	})
}

// TestCommandLineStringsAreData: names, prefixes and owners given on the
// command line are matched as the exact bytes they are, on every dialect:
// no LIKE wildcards, no quoting tricks, no case or padding folding.
func TestCommandLineStringsAreData(t *testing.T) {
	t.Parallel()
	const hostile = "'; DROP TABLE sqldlm_locks; --"
	names := []string{hostile, "a%c", "ab", "a_b", `a\d`, "x", "x ", "X"}
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			holder := client(t, db, `o"; --`)
			other := client(t, db, "other")
			code, _, errOut := run(t, "log", "on", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code, errOut)
			for _, n := range names {
				_, err := holder.TryLock(ctx, n, sqldlm.Exclusive)
				require.NoError(t, err, n)
			}
			_, err := other.TryLock(ctx, "y", sqldlm.Exclusive)
			require.NoError(t, err)

			locks := func(args ...string) []string {
				t.Helper()
				code, out, errOut := run(t, append([]string{"locks", "--dsn", db.DSN, "--output", "json"}, args...)...)
				require.Equal(t, ExitOK, code, errOut)
				var got locksJSON
				require.NoError(t, json.Unmarshal([]byte(out), &got), out)
				var names []string
				for _, l := range got.Locks {
					names = append(names, l.Name)
				}
				return names
			}
			require.ElementsMatch(t, []string{"a%c"}, locks("--prefix", "a%"))
			require.ElementsMatch(t, []string{"a_b"}, locks("--prefix", "a_"))
			require.ElementsMatch(t, []string{`a\d`}, locks("--prefix", `a\`))
			require.ElementsMatch(t, []string{"x", "x "}, locks("--prefix", "x"))
			require.ElementsMatch(t, []string{"x "}, locks("--prefix", "x "))
			require.ElementsMatch(t, []string{hostile}, locks("--prefix", hostile))
			require.ElementsMatch(t, names, locks("--owner", `o"; --`))
			require.Empty(t, locks("--owner", "o"))

			code, out, errOut := run(t, "log", "--dsn", db.DSN, "--name", hostile, "--output", "json")
			require.Equal(t, ExitOK, code, errOut)
			var entries logJSON
			require.NoError(t, json.Unmarshal([]byte(out), &entries), out)
			require.Len(t, entries.Entries, 1)
			require.Equal(t, hostile, entries.Entries[0].Name)

			// break NAME breaks the holders of exactly NAME: "x" is not
			// "x " or "X", and the hostile name's holder is the only one.
			code, out, errOut = run(t, "break", hostile, "--dsn", db.DSN, "--yes", "--output", "json")
			require.Equal(t, ExitOK, code, errOut)
			var broke breakJSON
			require.NoError(t, json.Unmarshal([]byte(out), &broke), out)
			require.Equal(t, hostile, broke.Name)
			require.Len(t, broke.Broken, 1)
			require.Equal(t, `o"; --`, broke.Broken[0].Owner)
			code, out, errOut = run(t, "break", "y ", "--dsn", db.DSN, "--yes", "--output", "json")
			require.Equal(t, ExitOK, code, errOut)
			require.NoError(t, json.Unmarshal([]byte(out), &broke), out)
			require.Empty(t, broke.Broken, `"y " is not "y"`)
			require.ElementsMatch(t, []string{"y"}, locks("--owner", "other"))
		})
	}
}
