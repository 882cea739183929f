package postgres

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sqldlm/sqldlm/dialect"
)

// sqlStateKinds maps PostgreSQL SQLSTATE codes onto the dialect sentinels.
var sqlStateKinds = map[string]error{
	"23505": dialect.ErrUniqueViolation,
	"40P01": dialect.ErrDeadlock,
	"40001": dialect.ErrSerialization,
	"55P03": dialect.ErrLockTimeout,    // lock_not_available (lock_timeout, NOWAIT)
	"42P01": dialect.ErrUndefinedTable, // undefined_table
	"42883": dialect.ErrUndefinedTable, // undefined_function: a routine of a missing migration
	"57P01": dialect.ErrConnection,     // admin_shutdown, pg_terminate_backend
	"57P02": dialect.ErrConnection,     // crash_shutdown
	"57P03": dialect.ErrConnection,     // cannot_connect_now
	"25P03": dialect.ErrConnection,     // idle_in_transaction_session_timeout
	// read_only_sql_transaction: the server is a standby (a failover left
	// the connection on the old primary, now demoted, or the DSN names a
	// standby) or refuses writes; sqldlm_current_epoch raises it on a
	// standby. Retried like a lost connection: the primary may be reached
	// through another host of the DSN, or soon.
	"25006": dialect.ErrConnection,
	"SQD01": dialect.ErrIsolation, // sqldlm_acquire_tx: the transaction is not at READ COMMITTED
}

// ClassifyError is the one place that looks inside pgx's error types.
func (postgresDialect) ClassifyError(err error) error {
	if err == nil {
		return nil
	}
	var de *dialect.Error
	if errors.As(err, &de) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if kind, ok := sqlStateKinds[pgErr.Code]; ok {
			return dialect.NewError(kind, pgErr.Code, err)
		}
		if len(pgErr.Code) == 5 && pgErr.Code[:2] == "08" { // connection_exception class
			return dialect.NewError(dialect.ErrConnection, pgErr.Code, err)
		}
		return err
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) || dialect.IsConnectionError(err) {
		return dialect.NewError(dialect.ErrConnection, "", err)
	}
	return err
}
