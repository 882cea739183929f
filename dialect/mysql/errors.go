package mysql

import (
	"errors"
	"strconv"
	"strings"

	"github.com/go-sql-driver/mysql"

	"github.com/sqldlm/sqldlm/dialect"
)

// errorKinds maps MySQL/MariaDB error numbers onto the dialect sentinels.
var errorKinds = map[uint16]error{
	1062: dialect.ErrUniqueViolation, // ER_DUP_ENTRY
	1213: dialect.ErrDeadlock,        // ER_LOCK_DEADLOCK (also Galera certification failures)
	1205: dialect.ErrLockTimeout,     // ER_LOCK_WAIT_TIMEOUT: only the statement was rolled back
	1146: dialect.ErrUndefinedTable,  // ER_NO_SUCH_TABLE
	1305: dialect.ErrUndefinedTable,  // ER_SP_DOES_NOT_EXIST: a procedure of a missing migration
	1927: dialect.ErrConnection,      // ER_CONNECTION_KILLED (MariaDB)
	1053: dialect.ErrConnection,      // ER_SERVER_SHUTDOWN
	4031: dialect.ErrConnection,      // ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24+)
	// Galera: the node cannot serve statements for now, as if it were down
	// (like PostgreSQL's 57P03): a waiting Lock tries again, TryLock fails.
	1047: dialect.ErrConnection, // ER_UNKNOWN_COM_ERROR: "WSREP has not yet prepared node for application use" (non-Primary, no quorum)
	1180: dialect.ErrConnection, // ER_ERROR_DURING_COMMIT: e.g. "Error while appending streaming replication fragment"; outcome unknown
}

// isolationPrefix starts the message of the error sqldlm_acquire_tx raises
// (SIGNAL with MYSQL_ERRNO 1644, ER_SIGNAL_EXCEPTION) when the caller's
// transaction's snapshot is too old for it.
const isolationPrefix = "sqldlm isolation:"

// ClassifyError is the one place that looks inside go-sql-driver's error types.
func (mysqlDialect) ClassifyError(err error) error {
	if err == nil {
		return nil
	}
	var de *dialect.Error
	if errors.As(err, &de) {
		return err
	}
	var myErr *mysql.MySQLError
	if errors.As(err, &myErr) {
		if myErr.Number == 1644 && strings.HasPrefix(myErr.Message, isolationPrefix) {
			return dialect.NewError(dialect.ErrIsolation, "1644", err)
		}
		if kind, ok := errorKinds[myErr.Number]; ok {
			return dialect.NewError(kind, strconv.Itoa(int(myErr.Number)), err)
		}
		return err
	}
	if errors.Is(err, mysql.ErrInvalidConn) || dialect.IsConnectionError(err) {
		return dialect.NewError(dialect.ErrConnection, "", err)
	}
	return err
}
