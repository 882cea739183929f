// Package migrations applies sqldlm's schema with a goose Provider. The SQL
// itself belongs to each dialect: goose migration files embedded in
// dialect/postgres/migrations, dialect/mysql/migrations and
// dialect/sqlite/migrations, handed over by [dialect.Dialect.Migrations];
// this package is the goose glue only.
//
// Applied versions are recorded in sqldlm's own table, sqldlm_schema_version,
// never in the application's goose_db_version, so sqldlm's migrations and the
// application's never interfere. Concurrent migrators take turns through the
// dialect's [dialect.Dialect.LockMigrations].
//
// Teams that apply schema with their own tool (Flyway, Alembic, Liquibase)
// can read the same files in those folders of the source tree: each file's
// "-- +goose Up" section is the forward migration and its "-- +goose Down"
// section the reverse. See the README for recording the version afterwards.
package migrations

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"

	"github.com/sqldlm/sqldlm/dialect"
)

// VersionTable is the table in which applied schema versions are recorded.
const VersionTable = "sqldlm_schema_version"

var gooseDialects = map[string]database.Dialect{
	"postgres": database.DialectPostgres,
	"mysql":    database.DialectMySQL,
	"sqlite":   database.DialectSQLite3,
}

// FS returns the migration files of d's dialect, as d.Migrations() hands
// them over: "00001_name.sql", ...
func FS(d dialect.Dialect) (fs.FS, error) {
	if _, ok := gooseDialects[d.Name()]; !ok {
		return nil, fmt.Errorf("no migrations for dialect %q", d.Name())
	}
	return d.Migrations(), nil
}

// Latest returns the newest schema version among d's migration files: the
// version this build of sqldlm needs.
func Latest(d dialect.Dialect) (int64, error) {
	fsys, err := FS(d)
	if err != nil {
		return 0, err
	}
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return 0, err
	}
	var latest int64
	for _, name := range names {
		prefix, _, ok := strings.Cut(path.Base(name), "_")
		if !ok {
			continue
		}
		v, err := strconv.ParseInt(prefix, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("migration file %s: version prefix: %w", name, err)
		}
		latest = max(latest, v)
	}
	return latest, nil
}

// NewProvider returns a goose Provider for d's migrations on db, with
// sqldlm's version table and the dialect's migration lock. The caller owns
// db: closing the Provider does not close it.
func NewProvider(db *sql.DB, d dialect.Dialect) (*goose.Provider, error) {
	fsys, err := FS(d)
	if err != nil {
		return nil, err
	}
	opts := []goose.ProviderOption{
		goose.WithSessionLocker(&sessionLocker{d: d, db: db, unlock: map[*sql.Conn]func(context.Context) error{}}),
		goose.WithDisableGlobalRegistry(true),
	}
	gd := gooseDialects[d.Name()]
	if gd == database.DialectMySQL {
		store, err := newMySQLStore()
		if err != nil {
			return nil, err
		}
		gd, opts = database.DialectCustom, append(opts, goose.WithStore(store))
	} else {
		opts = append(opts, goose.WithTableName(VersionTable))
	}
	return goose.NewProvider(gd, db, fsys, opts...)
}

// newStore returns the goose store NewProvider gives d's Provider.
func newStore(d dialect.Dialect) (database.Store, error) {
	if d.Name() == "mysql" {
		return newMySQLStore()
	}
	return database.NewStore(gooseDialects[d.Name()], VersionTable)
}

// prepareVersionTable makes sure the version table exists and is not empty,
// under the migration lock, before goose looks at it.
//
// goose's Up first checks for pending migrations without its lock, and that
// check creates the version table and inserts its version 0 row when the
// table is missing. Two migrators doing so at once can leave the table
// without that row: on a Galera cluster the second's CREATE TABLE (total
// order isolation) aborts the first's INSERT, and goose then finds the table
// and never inserts the row (HA-2026-12 G1). goose refuses an empty version
// table ("missing zero version migration") for ever after. Here the table
// and the row are created under the lock, and an empty table left by such a
// run, or by an older sqldlm, is repaired by inserting the row.
func prepareVersionTable(ctx context.Context, db *sql.DB, d dialect.Dialect) (err error) {
	store, err := newStore(d)
	if err != nil {
		return err
	}
	// The usual case, without the lock: the table exists and has rows.
	if _, err := store.GetLatestVersion(ctx, db); err == nil {
		return nil
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	unlock, err := lockMigrations(ctx, d, db, conn)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, unlock(context.WithoutCancel(ctx))) }()
	_, err = store.GetLatestVersion(ctx, conn)
	switch {
	case err == nil: // another migrator prepared it meanwhile
		return nil
	case errors.Is(d.ClassifyError(err), dialect.ErrUndefinedTable):
		if err := store.CreateVersionTable(ctx, conn); err != nil {
			return fmt.Errorf("create %s: %w", VersionTable, err)
		}
	case !errors.Is(err, database.ErrVersionNotFound): // not "exists and is empty"
		return fmt.Errorf("read %s: %w", VersionTable, err)
	}
	if err := store.Insert(ctx, conn, database.InsertRequest{Version: 0}); err != nil {
		return fmt.Errorf("insert version 0 into %s: %w", VersionTable, err)
	}
	return nil
}

// mysqlStore is goose's MySQL store, except that it reads the applied-at
// time as a Unix timestamp: goose scans it into a time.Time, which
// go-sql-driver/mysql supports only with parseTime=true, and sqldlm must work
// with the DSN a service already has.
type mysqlStore struct {
	database.Store
	ext database.StoreExtender
}

func newMySQLStore() (*mysqlStore, error) {
	store, err := database.NewStore(database.DialectMySQL, VersionTable)
	if err != nil {
		return nil, err
	}
	ext, ok := store.(database.StoreExtender)
	if !ok {
		return nil, errors.New("goose's MySQL store cannot check tables")
	}
	return &mysqlStore{Store: store, ext: ext}, nil
}

func (s *mysqlStore) GetMigration(ctx context.Context, db database.DBTxConn, version int64) (*database.GetMigrationResult, error) {
	var unix float64
	var applied bool
	err := db.QueryRowContext(ctx, `SELECT UNIX_TIMESTAMP(tstamp), is_applied FROM `+VersionTable+
		` WHERE version_id = ? ORDER BY tstamp DESC LIMIT 1`, version).Scan(&unix, &applied)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %d", database.ErrVersionNotFound, version)
	}
	if err != nil {
		return nil, fmt.Errorf("get migration %d: %w", version, err)
	}
	return &database.GetMigrationResult{Timestamp: time.UnixMicro(int64(unix * 1e6)).UTC(), IsApplied: applied}, nil
}

func (s *mysqlStore) TableExists(ctx context.Context, db database.DBTxConn) (bool, error) {
	return s.ext.TableExists(ctx, db)
}

// Up applies every pending migration. Any number of processes may run Up at
// once, through any nodes of a Galera cluster: they take turns, and those
// that come later find nothing to do. An empty version table, left by a
// migration interrupted before it recorded version 0, is repaired.
func Up(ctx context.Context, db *sql.DB, d dialect.Dialect) ([]*goose.MigrationResult, error) {
	p, err := NewProvider(db, d)
	if err != nil {
		return nil, err
	}
	if err := prepareVersionTable(ctx, db, d); err != nil {
		return nil, err
	}
	return p.Up(ctx)
}

// DownTo rolls back every applied migration newer than version (0 removes
// sqldlm's tables entirely).
func DownTo(ctx context.Context, db *sql.DB, d dialect.Dialect, version int64) ([]*goose.MigrationResult, error) {
	p, err := NewProvider(db, d)
	if err != nil {
		return nil, err
	}
	return p.DownTo(ctx, version)
}

// Status lists every migration with whether and when it was applied.
func Status(ctx context.Context, db *sql.DB, d dialect.Dialect) ([]*goose.MigrationStatus, error) {
	p, err := NewProvider(db, d)
	if err != nil {
		return nil, err
	}
	return p.Status(ctx)
}

// ErrNotMigrated is returned by [Current] when the version table does not
// exist: sqldlm's schema was never applied to this schema or database.
var ErrNotMigrated = errors.New("schema not migrated")

// Current returns the schema version recorded in the database (0 when the
// version table exists but no migration is applied). It reads only: unlike
// goose, it never creates the version table.
func Current(ctx context.Context, q database.DBTxConn, d dialect.Dialect) (int64, error) {
	gd, ok := gooseDialects[d.Name()]
	if !ok {
		return 0, fmt.Errorf("no migrations for dialect %q", d.Name())
	}
	store, err := database.NewStore(gd, VersionTable)
	if err != nil {
		return 0, err
	}
	v, err := store.GetLatestVersion(ctx, q)
	if errors.Is(err, database.ErrVersionNotFound) {
		return 0, nil
	}
	if err := d.ClassifyError(err); err != nil {
		if errors.Is(err, dialect.ErrUndefinedTable) {
			return 0, ErrNotMigrated
		}
		return 0, err
	}
	return v, nil
}

// lockMigrations takes d's migration lock on conn, a connection of db.
func lockMigrations(ctx context.Context, d dialect.Dialect, db *sql.DB, conn *sql.Conn) (func(context.Context) error, error) {
	if pl, ok := d.(dialect.PoolMigrationLocker); ok {
		return pl.LockMigrationsPool(ctx, db, conn)
	}
	return d.LockMigrations(ctx, conn)
}

// sessionLocker adapts [dialect.Dialect.LockMigrations] to goose.
type sessionLocker struct {
	d      dialect.Dialect
	db     *sql.DB
	mu     sync.Mutex
	unlock map[*sql.Conn]func(context.Context) error
}

func (l *sessionLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	unlock, err := lockMigrations(ctx, l.d, l.db, conn)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.unlock[conn] = unlock
	l.mu.Unlock()
	return nil
}

func (l *sessionLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	l.mu.Lock()
	unlock, ok := l.unlock[conn]
	delete(l.unlock, conn)
	l.mu.Unlock()
	if !ok {
		return errors.New("migration lock not held on this connection")
	}
	return unlock(ctx)
}
