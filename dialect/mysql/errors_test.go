package mysql_test

import (
	"strconv"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
)

// Galera's "node not ready" (1047, a node without quorum) and a failed
// commit (1180, seen during a quorum loss) are connection failures: a
// waiting Lock retries them within its context, TryLock fails at once.
// (Before: neither was classified, and Lock returned the first one.)
func TestClassifyErrorGalera(t *testing.T) {
	t.Parallel()
	d := mysql.Dialect()
	for _, e := range []*gomysql.MySQLError{
		{Number: 1047, Message: "WSREP has not yet prepared node for application use"},
		{Number: 1180, Message: "Error while appending streaming replication fragment"},
	} {
		err := d.ClassifyError(e)
		require.ErrorIs(t, err, dialect.ErrConnection, "%d", e.Number)
		require.False(t, dialect.IsRetryable(err), "%d: the outcome is unknown, not a rollback", e.Number)
		var de *dialect.Error
		require.ErrorAs(t, err, &de)
		require.Equal(t, strconv.Itoa(int(e.Number)), de.Code)
	}
	// Unchanged: an unclassified server error stays as it is.
	other := &gomysql.MySQLError{Number: 1064, Message: "syntax"}
	require.Same(t, error(other), d.ClassifyError(other))
}
