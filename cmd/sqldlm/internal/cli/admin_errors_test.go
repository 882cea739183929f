package cli

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// On a database that was never migrated, the inspection and audit commands
// fail with the database's error under the command's own words, once:
// "sqldlm locks: list locks: undefined table ...", not the library's
// "sqldlm: list locks: " a second time.
func TestCommandsOnUnmigratedDatabase(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, kind)
			for _, tc := range []struct {
				args   []string
				prefix string
			}{
				{[]string{"locks"}, "sqldlm locks: list locks: "},
				{[]string{"leases"}, "sqldlm leases: list leases: "},
				{[]string{"break", "node/1", "--yes"}, "sqldlm break: list holders: "},
				{[]string{"log"}, "sqldlm log: read the audit setting: "},
			} {
				code, out, errOut := run(t, append(tc.args, "--dsn", db.DSN)...)
				require.Equal(t, ExitError, code, "%v", tc.args)
				require.Empty(t, out, "%v", tc.args)
				require.True(t, strings.HasPrefix(errOut, tc.prefix), "%v: %q", tc.args, errOut)
				require.Contains(t, errOut, "undefined table", "%v", tc.args)
				require.NotContains(t, errOut, "sqldlm: ", "%v", tc.args)
				require.Equal(t, 1, strings.Count(errOut, "\n"), "%v: one line: %q", tc.args, errOut)
			}
		})
	}
}
