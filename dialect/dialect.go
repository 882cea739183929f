// Package dialect is the seam between sqldlm's lock semantics and the SQL of
// one database. The root package talks only to the [Dialect] interface; each
// implementation (dialect/postgres, dialect/mysql, dialect/sqlite) owns its SQL,
// its driver's error codes and its notion of the server's "now".
//
// The interface is not meant for implementations outside this module until
// sqldlm 1.0: it grows with every feature, and methods may change without
// notice. Use the dialects shipped with sqldlm.
//
// This package imports the standard library only.
package dialect

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"regexp"
	"syscall"
	"time"
)

// Dialect is one database's implementation of sqldlm's storage operations.
// Implementations are stateless values, safe for concurrent use.
type Dialect interface {
	// Name is the dialect's short name: "postgres", "mysql" or "sqlite". It is
	// also the name of the dialect's package under dialect/ and the scheme of
	// its DSNs in the CLI.
	Name() string

	// Migrations returns the dialect's schema as goose SQL migrations, one
	// file per version ("00001_create_lock_tables.sql", ...), embedded in the
	// dialect's package. The migrations package applies them.
	Migrations() fs.FS

	// ClassifyError maps a driver error onto the sentinels of this package
	// (ErrUniqueViolation, ErrDeadlock, ...). The result wraps the sentinel and
	// keeps the driver's message and code as text, so nothing above the seam
	// depends on driver types. Errors the dialect does not recognise are
	// returned unchanged; nil stays nil.
	ClassifyError(err error) error

	// LockMigrations serialises schema migrations across processes. It blocks
	// on conn until no other migrator of the same schema (PostgreSQL) or
	// database (MySQL) or file (SQLite) holds the lock, or ctx ends. The
	// returned function releases the lock; it must be called on success.
	LockMigrations(ctx context.Context, conn *sql.Conn) (unlock func(context.Context) error, err error)

	Locker
	Inspector
	Auditor
	Grouper
}

// PoolMigrationLocker is a [Dialect] whose migration lock is better kept
// with a pool at hand: on a Galera cluster the MySQL dialect's lock is a row
// that another connection of db keeps fresh while the migration runs on
// conn, so that a migrator that died is recognised by its stale row. The
// migrations package calls LockMigrationsPool instead of LockMigrations when
// the dialect has it; the contract is LockMigrations'.
type PoolMigrationLocker interface {
	LockMigrationsPool(ctx context.Context, db *sql.DB, conn *sql.Conn) (unlock func(context.Context) error, err error)
}

// Testable is a [Dialect] with what sqldlm's tests need and sqldlm itself
// never calls. Every dialect shipped with sqldlm implements it; the
// conformance suite (dialecttest) and the test databases (internal/testdb)
// assert it.
type Testable interface {
	Dialect

	// TimePrecision is the resolution of the server timestamps the dialect
	// stores and compares (microseconds on PostgreSQL and MySQL, milliseconds on
	// SQLite).
	TimePrecision() time.Duration

	// Now reads the database server's clock: the time at which the statement
	// runs, not the start of an enclosing transaction. It is the clock every
	// expiry decision is made with (inside the dialect's SQL).
	Now(ctx context.Context, q Querier) (time.Time, error)

	// QuoteIdentifier validates name with [ValidateIdentifier] and quotes it
	// for use as a schema, database or table name in this dialect's SQL.
	QuoteIdentifier(name string) (string, error)
}

// Querier is what [Dialect] methods need to run a statement: a *sql.DB,
// *sql.Conn or *sql.Tx.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

var (
	_ Querier = (*sql.DB)(nil)
	_ Querier = (*sql.Conn)(nil)
	_ Querier = (*sql.Tx)(nil)
)

// Sentinels that [Dialect.ClassifyError] maps driver errors onto. Match them
// with errors.Is.
var (
	// ErrUniqueViolation: a unique or primary key constraint was violated
	// (PostgreSQL 23505, MySQL 1062, SQLite CONSTRAINT_UNIQUE/PRIMARYKEY).
	ErrUniqueViolation = errors.New("unique violation")
	// ErrDeadlock: the server chose this transaction as a deadlock victim and
	// rolled it back (PostgreSQL 40P01, MySQL 1213). Retry the transaction.
	ErrDeadlock = errors.New("deadlock")
	// ErrSerialization: a serialization failure at REPEATABLE READ or
	// SERIALIZABLE (PostgreSQL 40001). Retry the transaction.
	ErrSerialization = errors.New("serialization failure")
	// ErrLockTimeout: a lock wait timed out (PostgreSQL 55P03, MySQL 1205,
	// SQLite BUSY/LOCKED). On MySQL only the statement was rolled back: roll
	// back the transaction before anything else.
	ErrLockTimeout = errors.New("lock wait timeout")
	// ErrConnection: the connection to the server failed or was lost; the
	// outcome of the statement in flight is unknown.
	ErrConnection = errors.New("connection lost")
	// ErrUndefinedTable: a table (or routine) that the statement names does
	// not exist, typically because the schema was never migrated.
	ErrUndefinedTable = errors.New("undefined table")
	// ErrIsolation: [Locker.AcquireTx] was called in a transaction whose
	// isolation it cannot work in: on PostgreSQL any level but READ
	// COMMITTED (SQLSTATE SQD01); on MySQL a snapshot older than the name's
	// last grant, as a REPEATABLE READ transaction has (SIGNAL 1644 with a
	// message starting "sqldlm isolation:"). Nothing was changed; the
	// transaction is still usable on MySQL, aborted on PostgreSQL.
	ErrIsolation = errors.New("transaction isolation must be READ COMMITTED")
)

// Error is a driver error translated by [Dialect.ClassifyError]. It wraps
// Kind (one of this package's sentinels); the driver's own error value is not
// part of the chain, only its text and code.
type Error struct {
	Kind    error  // ErrDeadlock, ErrConnection, ...
	Code    string // the driver's code: SQLSTATE, MySQL error number, SQLite code
	Message string // the driver's message
	cause   error  // context.Canceled or DeadlineExceeded, kept for errors.Is
}

// NewError returns an *Error of kind for the driver error err. If err is or
// wraps context.Canceled or context.DeadlineExceeded, that stays matchable
// with errors.Is.
func NewError(kind error, code string, err error) *Error {
	e := &Error{Kind: kind, Code: code, Message: err.Error()}
	for _, ctxErr := range []error{context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, ctxErr) {
			e.cause = ctxErr
		}
	}
	return e
}

func (e *Error) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("%s (%s): %s", e.Kind, e.Code, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Kind, e.Message)
}

// Unwrap returns the sentinel kind and, when present, the context error.
func (e *Error) Unwrap() []error {
	if e.cause != nil {
		return []error{e.Kind, e.cause}
	}
	return []error{e.Kind}
}

// IsRetryable reports whether err (already classified) means the whole
// transaction can be run again: a deadlock, a serialization failure or a lock
// wait timeout. Connection errors are not retryable here, because the outcome
// of the statement is unknown; callers that made the statement idempotent may
// treat them separately.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrDeadlock) || errors.Is(err, ErrSerialization) || errors.Is(err, ErrLockTimeout)
}

var identifierRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// ValidateIdentifier checks a configurable identifier (schema, database or
// table name): an ASCII letter or underscore, then up to 62 letters, digits
// or underscores. The limit of 63 bytes is PostgreSQL's NAMEDATALEN, beyond
// which PostgreSQL silently truncates names so that two of them could
// collide. Identifiers are still quoted after validation.
func ValidateIdentifier(name string) error {
	if !identifierRE.MatchString(name) {
		return fmt.Errorf("invalid identifier %q: use 1 to 63 ASCII letters, digits or underscores, not starting with a digit", name)
	}
	return nil
}

// IsConnectionError reports whether err, as returned by database/sql or a
// driver, means the connection failed or was lost: driver.ErrBadConn, an
// unexpected EOF, a closed network connection or any net.Error (refused,
// reset, timed out). Dialects call it for errors that are not the server's
// own SQL errors.
func IsConnectionError(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var netErr net.Error
	return errors.As(err, &netErr)
}
