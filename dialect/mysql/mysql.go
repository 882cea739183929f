// Package mysql is sqldlm's dialect for MySQL 8 and MariaDB 10.6 and later,
// through github.com/go-sql-driver/mysql.
//
// It works with the DSN a service already has: parseTime and
// multiStatements are not needed and loc does not matter, because every
// timestamp crosses the wire as an integer count of microseconds since the
// Unix epoch, computed on the server in UTC. Each operation is one CALL of a
// stored procedure (created by the migrations) so that it costs one round
// trip; the procedures set time_zone to UTC and READ COMMITTED for their own
// work and restore the session's settings before they return.
//
// sqldlm's tables live in the connection's current database (the one named
// in the DSN).
//
// The package owns its SQL: migrations/ holds the goose migrations, one file
// per schema version, embedded and handed over by [Dialect]().Migrations();
// schema/ holds the live result, one file per table, view and procedure,
// generated from them by go generate.
package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

// Dialect returns a MySQL/MariaDB dialect. It is safe for concurrent use.
//
// It keeps its procedure calls prepared per *sql.DB: go-sql-driver, unless
// the DSN sets interpolateParams, prepares every statement with arguments
// before running it, which would cost each operation a second round trip.
func Dialect() dialect.Dialect { return mysqlDialect{stmts: &sync.Map{}} }

type mysqlDialect struct {
	stmts *sync.Map // stmtKey → *sql.Stmt
}

type stmtKey struct {
	db    *sql.DB
	query string
}

// prepared returns query prepared on db, preparing it on first use.
// database/sql re-prepares it on each connection of the pool as needed.
func (d mysqlDialect) prepared(ctx context.Context, db *sql.DB, query string) (*sql.Stmt, error) {
	key := stmtKey{db, query}
	if s, ok := d.stmts.Load(key); ok {
		return s.(*sql.Stmt), nil
	}
	stmt, err := db.PrepareContext(ctx, query)
	if err != nil {
		return nil, d.ClassifyError(err)
	}
	if prev, loaded := d.stmts.LoadOrStore(key, stmt); loaded {
		stmt.Close()
		return prev.(*sql.Stmt), nil
	}
	return stmt, nil
}

var _ dialect.Testable = mysqlDialect{}

func (mysqlDialect) Name() string { return "mysql" }

// String returns the dialect's name, so that a Dialect prints as one.
func (d mysqlDialect) String() string { return d.Name() }

func (mysqlDialect) TimePrecision() time.Duration { return time.Microsecond }

// Now calls sqldlm_now(), which reads SYSDATE(6) under time_zone '+00:00'.
// SYSDATE is the time the function runs; NOW() is the statement's start and
// follows a session's SET timestamp, so it is never used for expiry.
func (d mysqlDialect) Now(ctx context.Context, q dialect.Querier) (time.Time, error) {
	var us int64
	if err := q.QueryRowContext(ctx, `CALL sqldlm_now()`).Scan(&us); err != nil {
		return time.Time{}, fmt.Errorf("read server clock: %w", d.ClassifyError(err))
	}
	return time.UnixMicro(us).UTC(), nil
}

// migrationLockWait is how long one GET_LOCK call waits in the server before
// LockMigrations checks its context again.
const migrationLockWait = 1

// LockMigrations takes GET_LOCK on a name derived from the current database,
// so migrators of different databases on one server do not wait on each
// other. GET_LOCK is local to one server, so on a Galera cluster
// (wsrep_on) the lock is a row of sqldlm_migration_lock instead, which
// certification makes cluster-wide: see LockMigrationsPool.
func (d mysqlDialect) LockMigrations(ctx context.Context, conn *sql.Conn) (func(context.Context) error, error) {
	return d.LockMigrationsPool(ctx, nil, conn)
}

// LockMigrationsPool is LockMigrations; on a Galera cluster a connection of
// db (when not nil) keeps the lock row fresh while the migration runs.
func (d mysqlDialect) LockMigrationsPool(ctx context.Context, db *sql.DB, conn *sql.Conn) (func(context.Context) error, error) {
	var database sql.NullString
	if err := conn.QueryRowContext(ctx, `SELECT DATABASE()`).Scan(&database); err != nil {
		return nil, fmt.Errorf("read current database: %w", d.ClassifyError(err))
	}
	if !database.Valid {
		return nil, errors.New("no database selected: name one in the DSN (mysql://user@host:3306/DATABASE)")
	}
	galera, err := d.wsrepOn(ctx, conn)
	if err != nil {
		return nil, err
	}
	if galera {
		return d.lockMigrationsCluster(ctx, db, conn, database.String)
	}
	const lockName = `CONCAT('sqldlm:migrate:', SHA1(DATABASE()))` // 55 characters, under the limit of 64
	for {
		var got sql.NullInt64
		err := conn.QueryRowContext(ctx, `SELECT GET_LOCK(`+lockName+`, ?)`, migrationLockWait).Scan(&got)
		if err != nil {
			sqlutil.Discard(conn)
			return nil, fmt.Errorf("lock database %q for migration: %w", database.String, d.ClassifyError(err))
		}
		if got.Valid && got.Int64 == 1 {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("lock database %q for migration: %w", database.String, err)
		}
	}
	return func(ctx context.Context) error {
		var released sql.NullInt64
		err := conn.QueryRowContext(ctx, `SELECT RELEASE_LOCK(`+lockName+`)`).Scan(&released)
		if err == nil && (!released.Valid || released.Int64 != 1) {
			err = errors.New("migration lock was not held")
		}
		if err != nil {
			sqlutil.Discard(conn)
			return fmt.Errorf("unlock database %q after migration: %w", database.String, d.ClassifyError(err))
		}
		return nil
	}, nil
}

func (mysqlDialect) QuoteIdentifier(name string) (string, error) {
	if err := dialect.ValidateIdentifier(name); err != nil {
		return "", err
	}
	return "`" + strings.ReplaceAll(name, "`", "``") + "`", nil
}
