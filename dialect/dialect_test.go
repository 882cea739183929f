package dialect_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/dialect/sqlite"
)

func TestQuoteIdentifier(t *testing.T) {
	t.Parallel()
	for _, shipped := range []dialect.Dialect{postgres.Dialect(), mysql.Dialect(), sqlite.Dialect()} {
		t.Run(shipped.Name(), func(t *testing.T) {
			t.Parallel()
			d, ok := shipped.(dialect.Testable)
			require.True(t, ok, "every shipped dialect is Testable")
			for _, good := range []string{"locks", "_x", "A1_b2", strings.Repeat("n", 63)} {
				q, err := d.QuoteIdentifier(good)
				require.NoError(t, err, good)
				require.Contains(t, q, good)
				require.Len(t, q, len(good)+2, "quoted once on each side")
			}
			for _, bad := range []string{
				"", "1abc", "a-b", "a b", "a;DROP TABLE x", `a"b`, "a`b", "a'b", "ünïcode", "a\x00b",
				strings.Repeat("n", 64), // PostgreSQL would truncate it silently
			} {
				_, err := d.QuoteIdentifier(bad)
				require.ErrorContains(t, err, "invalid identifier", "%q", bad)
			}
		})
	}
}

func TestIsRetryable(t *testing.T) {
	t.Parallel()
	require.True(t, dialect.IsRetryable(&dialect.Error{Kind: dialect.ErrDeadlock}))
	require.True(t, dialect.IsRetryable(&dialect.Error{Kind: dialect.ErrSerialization}))
	require.True(t, dialect.IsRetryable(&dialect.Error{Kind: dialect.ErrLockTimeout}))
	require.False(t, dialect.IsRetryable(&dialect.Error{Kind: dialect.ErrConnection}), "the outcome is unknown")
	require.False(t, dialect.IsRetryable(&dialect.Error{Kind: dialect.ErrUniqueViolation}))
}
