package cli

import (
	"context"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// planted is the password the tests plant in DSNs; no output may show it.
const planted = "Pl4ntedSecret"

// plantedDSNs are the DSN forms a user may hand the CLI (the last two it
// refuses), each carrying the planted password.
var plantedDSNs = []string{
	"postgres://u:" + planted + "@127.0.0.1:1/db?connect_timeout=2",
	"postgres://u@127.0.0.1:1/db?connect_timeout=2&password=" + planted,
	"postgres://u:" + planted + "@127.0.0.1:1/db?sslmode=bogus",
	"mysql://root:" + planted + "@127.0.0.1:1/test",
	"mysql://root:" + planted + "@h:bad port/db",
	"host=127.0.0.1 port=1 user=u password=" + planted + " dbname=db",
	"root:" + planted + "@tcp(127.0.0.1:1)/test",
}

func requireNoPassword(t *testing.T, what string, outputs ...string) {
	t.Helper()
	for _, o := range outputs {
		require.NotContains(t, o, planted, "%s printed the password:\n%s", what, o)
	}
}

// Help prints --dsn's default, $SQLDLM_DSN, with its password hidden.
func TestHelpHidesPassword(t *testing.T) {
	for _, raw := range plantedDSNs {
		t.Setenv("SQLDLM_DSN", raw)
		for name := range commands {
			code, out, errOut := run(t, name, "--help")
			require.Equal(t, ExitOK, code, name)
			requireNoPassword(t, "sqldlm "+name+" --help", out, errOut)
			if strings.Contains(raw, "://u:") && name != "demo" { // demo takes no DSN
				require.Contains(t, errOut, "u:xxxxx@", "the default is shown, redacted")
			}
		}
		code, out, errOut := run(t, "help")
		require.Equal(t, ExitOK, code)
		requireNoPassword(t, "sqldlm help", out, errOut)
	}
}

// Errors (a DSN that does not parse, a server that refuses or does not
// exist, the driver's own messages) never show the password, whether the
// DSN comes from --dsn or from $SQLDLM_DSN.
func TestErrorsHidePassword(t *testing.T) {
	dsns := plantedDSNs
	if raw := os.Getenv("SQLDLM_TEST_MYSQL_DSN"); raw != "" {
		// A real server that refuses the password: the driver's error.
		u, err := url.Parse(raw)
		require.NoError(t, err)
		u.User = url.UserPassword(u.User.Username(), planted)
		dsns = append(dsns, u.String())
	}
	for _, raw := range dsns {
		for _, args := range [][]string{
			{"locks", "--dsn", raw},
			{"migrate", "status", "--timeout", "3s", "--dsn=" + raw},
			{"run", "--lock", "x", "--dsn", raw, "--", "true"},
		} {
			t.Setenv("SQLDLM_DSN", "")
			code, out, errOut := run(t, args...)
			require.NotEqual(t, ExitOK, code, "%v", args)
			require.NotEmpty(t, errOut)
			requireNoPassword(t, strings.Join(args, " "), out, errOut)

			t.Setenv("SQLDLM_DSN", raw)
			envArgs := []string{}
			for i := 0; i < len(args); i++ {
				switch {
				case args[i] == "--dsn":
					i++
				case strings.HasPrefix(args[i], "--dsn="):
				default:
					envArgs = append(envArgs, args[i])
				}
			}
			code, out, errOut = run(t, envArgs...)
			require.NotEqual(t, ExitOK, code, "%v", envArgs)
			requireNoPassword(t, strings.Join(envArgs, " ")+" with $SQLDLM_DSN", out, errOut)
		}
	}
}

// The commands that work (tables, JSON, the operator's log lines of break,
// run) never show the password of the DSN they were given. PostgreSQL's
// test server trusts local connections, so it accepts the planted password.
func TestOutputHidesPassword(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	u.User = url.UserPassword(u.User.Username(), planted)
	raw := u.String()

	c := client(t, db, "redact-holder")
	ctx := context.Background()
	_, err = c.Lock(ctx, "redact/held", sqldlm.Exclusive)
	require.NoError(t, err)
	for _, args := range [][]string{
		{"locks", "--dsn", raw},
		{"locks", "--dsn", raw, "--output", "json"},
		{"leases", "--dsn", raw, "--output", "json"},
		{"migrate", "status", "--dsn", raw},
		{"log", "--dsn", raw, "--output", "json"},
		{"run", "--dsn", raw, "--lock", "redact/run", "--ttl", "2s", "--", "true"},
		{"break", "redact/held", "--dsn", raw, "--yes", "--output", "json"},
		{"reap", "--dsn", raw, "--output", "json"},
	} {
		code, out, errOut := run(t, args...)
		require.Equal(t, ExitOK, code, "%v: %s", args, errOut)
		requireNoPassword(t, strings.Join(args, " "), out, errOut)
	}
}
