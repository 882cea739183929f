package cli

import (
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// The CLI takes the DSN forms users have in their services' configuration:
// go-sql-driver's user@tcp(host:port)/db (bare or after mysql://, and
// mariadb:// URLs) and libpq's keyword form. Each reaches the same database
// as the URL: a migration through it is seen through the URL.
func TestDSNForms(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, kind)
			u, err := url.Parse(db.DSN)
			require.NoError(t, err)
			var forms []string
			switch kind {
			case testdb.MySQL:
				userinfo := u.User.Username()
				if pw, ok := u.User.Password(); ok {
					userinfo += ":" + pw
				}
				driver := userinfo + "@tcp(" + u.Host + ")" + u.Path
				if u.RawQuery != "" {
					driver += "?" + u.RawQuery
				}
				forms = []string{driver, "mysql://" + driver, "mariadb://" + strings.TrimPrefix(db.DSN, "mysql://")}
			case testdb.Postgres:
				kw := "host=" + u.Hostname() + " port=" + u.Port() + " dbname=" + strings.TrimPrefix(u.Path, "/") +
					" user=" + u.User.Username()
				for k, vs := range u.Query() {
					kw += " " + k + "=" + vs[0]
				}
				forms = []string{kw}
			}
			for i, form := range forms {
				code, out, errOut := run(t, "migrate", "status", "--dsn", form)
				require.Equal(t, ExitOK, code, "%s: %s", form, errOut)
				if i == 0 {
					require.Contains(t, out, "pending", form)
					code, _, errOut = run(t, "migrate", "up", "--dsn", form)
					require.Equal(t, ExitOK, code, "%s: %s", form, errOut)
				}
				code, _, errOut = run(t, "locks", "--dsn", form)
				require.Equal(t, ExitOK, code, "%s: %s", form, errOut)
			}
			code, _, errOut := run(t, "locks", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code, "the URL sees the schema migrated through another form: %s", errOut)
		})
	}
}

// A DSN in no form sqldlm reads is a usage error that says which forms
// work, with the DSN translated where the intent is clear.
func TestDSNRefused(t *testing.T) {
	t.Parallel()
	code, _, errOut := run(t, "locks", "--dsn", "root:secret-pw@db.example:3306/app")
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut, "did you mean mysql://root:xxxxx@db.example:3306/app or root:xxxxx@tcp(db.example:3306)/app?")
	require.Contains(t, errOut, "go-sql-driver's user:pass@tcp(host:3306)/db")
	require.NotContains(t, errOut, "secret-pw")
}
