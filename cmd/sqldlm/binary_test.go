package main

import (
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// The sqldlm binary itself, built from this package, against the three
// dialects: the DSN forms users have, "not migrated" naming where it
// looked, exit codes, and no password in what it prints.
func TestBinary(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to build the binary with")
	}
	bin := filepath.Join(t.TempDir(), "sqldlm")
	built, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", built)
	run := func(args ...string) (int, string, string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "SQLDLM_DSN=")
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), stdout.String(), stderr.String()
		}
		require.NoError(t, err)
		return 0, stdout.String(), stderr.String()
	}

	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			db := testdb.Open(t, kind)
			dsns := []string{db.DSN}
			u, _ := url.Parse(db.DSN)
			switch kind {
			case testdb.MySQL:
				userinfo := u.User.Username()
				if pw, ok := u.User.Password(); ok {
					userinfo += ":" + pw
				}
				dsns = append(dsns, userinfo+"@tcp("+u.Host+")"+u.Path)
			case testdb.Postgres:
				dsns = append(dsns, "host="+u.Hostname()+" port="+u.Port()+" dbname="+strings.TrimPrefix(u.Path, "/")+
					" user="+u.User.Username()+" search_path="+u.Query().Get("search_path")+" sslmode=disable")
			}
			code, _, errOut := run("locks", "--dsn", dsns[len(dsns)-1])
			require.Equal(t, 1, code, errOut)
			require.Contains(t, errOut, dsn.Scrub("not migrated: sqldlm's tables are not in ", db.DSN)) // the password scrubbed wherever it occurs
			code, _, errOut = run("migrate", "up", "--dsn", dsns[len(dsns)-1])
			require.Equal(t, 0, code, errOut)
			for _, d := range dsns {
				code, out, errOut := run("locks", "--dsn", d)
				require.Equal(t, 0, code, "%s: %s", d, errOut)
				require.Equal(t, "no locks held or awaited\n", out)
			}
			code, _, errOut = run("run", "--dsn", db.DSN, "--lock", "x", "--ttl", "-5s", "--", "true")
			require.Equal(t, 2, code, "a bad flag is a usage error")
			require.Contains(t, errOut, "--ttl -5s")
			code, out, errOut := run("run", "--dsn", db.DSN, "--lock", "cron/x", "--", "sh", "-c", `echo "$SQLDLM_LOCK $SQLDLM_TOKEN"`)
			require.Equal(t, 0, code, errOut)
			require.Regexp(t, `^cron/x [1-9][0-9]*\n$`, out)
		})
	}

	code, out, _ := run("--version")
	require.Equal(t, 0, code)
	require.Contains(t, out, "schema version")
	code, _, errOut := run("leases", "--dsn", "root:hunter2-secret@db.invalid:3306/app")
	require.Equal(t, 2, code)
	require.Contains(t, errOut, "did you mean mysql://root:xxxxx@db.invalid:3306/app")
	require.NotContains(t, errOut, "hunter2-secret")
}
