// Package sqlite is sqldlm's dialect for SQLite 3.42 and later, meant for
// modernc.org/sqlite (pure Go). It is the embedded backend of the demo and
// of tests on a machine with Go alone, and it suits several processes of one
// host sharing a database file.
//
// This package does not import a driver: import modernc.org/sqlite yourself
// and open the database with it. Open it in WAL mode with a busy timeout, for
// example "file:locks.db?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)";
// sqldlm also sets busy_timeout on the connections it uses.
//
// The package owns its SQL: migrations/ holds the goose migrations, one file
// per schema version, embedded and handed over by [Dialect]().Migrations();
// schema/ holds the live result, one file per table and view, generated from
// them by go generate.
package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// Dialect returns an SQLite dialect. It is safe for concurrent use.
//
// SQLite lets one connection write at a time, and a connection that finds
// the database busy sleeps and retries: a steady stream of writers can starve
// one of them (a lease renewal, say) for seconds. The dialect therefore
// queues its own writes to each database in the process on a gate that
// honours contexts; writers in other processes still meet SQLite's busy
// handler, which is why SQLite suits a few processes of one host.
func Dialect() dialect.Dialect { return &sqliteDialect{} }

type sqliteDialect struct {
	gates sync.Map // *sql.DB → chan struct{} (capacity 1): the write gate
}

var _ dialect.Testable = (*sqliteDialect)(nil)

// gate returns db's write gate.
func (d *sqliteDialect) gate(db *sql.DB) chan struct{} {
	g, _ := d.gates.LoadOrStore(db, make(chan struct{}, 1))
	return g.(chan struct{})
}

// enter waits for db's write gate and returns the function that leaves it.
func (d *sqliteDialect) enter(ctx context.Context, db *sql.DB) (func(), error) {
	gate := d.gate(db)
	select {
	case gate <- struct{}{}:
		return func() { <-gate }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (*sqliteDialect) Name() string { return "sqlite" }

// tryEnter is enter without waiting: ok is false when another write of
// this process holds db's gate.
func (d *sqliteDialect) tryEnter(db *sql.DB) (leave func(), ok bool) {
	gate := d.gate(db)
	select {
	case gate <- struct{}{}:
		return func() { <-gate }, true
	default:
		return nil, false
	}
}

// String returns the dialect's name, so that a Dialect prints as one.
func (d *sqliteDialect) String() string { return d.Name() }

// TimePrecision is a millisecond: SQLite's clock ('now') has no finer
// resolution.
func (*sqliteDialect) TimePrecision() time.Duration { return time.Millisecond }

// nowMicros is SQLite's clock in microseconds since the Unix epoch, the unit
// of every timestamp column (rounded to SQLite's millisecond resolution).
const nowMicros = `(CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER) * 1000)`

func (d *sqliteDialect) Now(ctx context.Context, q dialect.Querier) (time.Time, error) {
	var us int64
	if err := q.QueryRowContext(ctx, `SELECT `+nowMicros).Scan(&us); err != nil {
		return time.Time{}, fmt.Errorf("read clock: %w", d.ClassifyError(err))
	}
	return time.UnixMicro(us).UTC(), nil
}

// busyTimeout is how long a statement waits for another connection's write
// lock before SQLite reports SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// LockMigrations takes an exclusive advisory lock (flock on Unix, LockFileEx
// on Windows) on a file beside the database file, so migrators in several
// processes of one host take turns. An in-memory database needs no lock.
func (d *sqliteDialect) LockMigrations(ctx context.Context, conn *sql.Conn) (func(context.Context) error, error) {
	if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PRAGMA busy_timeout = %d`, busyTimeout.Milliseconds())); err != nil {
		return nil, fmt.Errorf("set busy_timeout: %w", d.ClassifyError(err))
	}
	var file string
	if err := conn.QueryRowContext(ctx, `SELECT file FROM pragma_database_list WHERE name = 'main'`).Scan(&file); err != nil {
		return nil, fmt.Errorf("find database file: %w", d.ClassifyError(err))
	}
	if file == "" { // in-memory or temporary database: private to this connection
		return func(context.Context) error { return nil }, nil
	}
	return lockFile(ctx, file+".sqldlm-migrate.lock")
}

func (*sqliteDialect) QuoteIdentifier(name string) (string, error) {
	if err := dialect.ValidateIdentifier(name); err != nil {
		return "", err
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`, nil
}
