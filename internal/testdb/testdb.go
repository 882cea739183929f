// Package testdb gives each test its own empty database of a given kind:
// its own schema on PostgreSQL, its own database on MySQL/MariaDB, its own
// file on SQLite. Tests using it run in parallel without seeing each other.
//
// Where the servers come from, in order:
//   - SQLDLM_TEST_POSTGRES_DSN / SQLDLM_TEST_MYSQL_DSN, as sqldlm DSN URLs
//     (postgres://postgres@127.0.0.1:5432/test?sslmode=disable,
//     mysql://root@127.0.0.1:3306/test);
//   - otherwise a container started through testcontainers-go, once per test
//     binary, when a Docker engine answers;
//   - otherwise the test is skipped with one line saying how to run it.
//
// SQLDLM_TEST_REQUIRE=postgres,mysql turns those skips into failures.
// SQLite needs nothing and always runs.
//
// Only tests import this package; the library never links testcontainers.
package testdb

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/dialect/sqlite"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/migrations"
)

// Kinds of database, as named in SQLDLM_TEST_REQUIRE.
const (
	Postgres = "postgres"
	MySQL    = "mysql"
	SQLite   = "sqlite"
)

// Kinds lists every kind, in the order tests usually run them.
var Kinds = []string{Postgres, MySQL, SQLite}

// Holds names the relation of every hold in a database of kind, with the
// columns of sqldlm_holders: on PostgreSQL the view sqldlm_holds, which adds
// the holds kept in their names' rows (schema version 13); elsewhere the
// table itself.
func Holds(kind string) string {
	if kind == Postgres {
		return "sqldlm_holds"
	}
	return "sqldlm_holders"
}

// DB is one test's isolated database.
type DB struct {
	*sql.DB
	Kind    string
	Dialect dialect.Testable
	// DSN is a sqldlm DSN URL that reaches the same isolated schema,
	// database or file: child processes and extra pools open it with Reopen.
	DSN string
}

// Dialects returns the dialect of each kind, with the methods only tests
// use.
func Dialects() map[string]dialect.Testable {
	return map[string]dialect.Testable{
		Postgres: postgres.Dialect().(dialect.Testable),
		MySQL:    mysql.Dialect().(dialect.Testable),
		SQLite:   sqlite.Dialect().(dialect.Testable),
	}
}

// Open returns a new, empty, isolated database of kind for t, dropped when t
// ends. It skips t when no server of that kind is available (fails instead if
// SQLDLM_TEST_REQUIRE names the kind).
func Open(t testing.TB, kind string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The name carries its creation time, so that sweepStale can drop what
	// an interrupted run left behind.
	name := fmt.Sprintf("%s%d_%s", namePrefix, time.Now().Unix(), randomSuffix())
	var rawDSN string
	switch kind {
	case SQLite:
		// t.TempDir is absolute, so this is sqlite:///abs/path.db.
		rawDSN = "sqlite://" + filepath.ToSlash(filepath.Join(t.TempDir(), name+".db"))
	case Postgres, MySQL:
		base := serverDSN(t, kind)
		admin, _, err := dsn.Open(ctx, base)
		if err != nil {
			t.Fatalf("testdb: %v", err)
		}
		defer admin.Close()
		d := Dialects()[kind]
		sweepStale(ctx, t, kind, admin)
		quoted, err := d.QuoteIdentifier(name)
		if err != nil {
			t.Fatalf("testdb: %v", err)
		}
		what := map[string]string{Postgres: "SCHEMA", MySQL: "DATABASE"}[kind]
		if _, err := admin.ExecContext(ctx, "CREATE "+what+" "+quoted); err != nil {
			t.Fatalf("testdb: create %s %s: %v", strings.ToLower(what), name, err)
		}
		dropStmt := "DROP " + what + " " + quoted
		if kind == Postgres {
			dropStmt += " CASCADE"
		}
		t.Cleanup(func() { drop(t, base, dropStmt) })
		rawDSN = isolate(t, kind, base, name)
	default:
		t.Fatalf("testdb: unknown kind %q (want one of %v)", kind, Kinds)
	}
	return Reopen(t, kind, rawDSN)
}

// OpenMigrated is Open followed by applying sqldlm's migrations.
func OpenMigrated(t testing.TB, kind string) *DB {
	t.Helper()
	db := Open(t, kind)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := migrations.Up(ctx, db.DB, db.Dialect); err != nil {
		t.Fatalf("testdb: migrate %s: %v", kind, err)
	}
	return db
}

// Reopen opens another pool on the database rawDSN names, closed when t
// ends. It is how a test gives several clients pools of their own.
func Reopen(t testing.TB, kind, rawDSN string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, _, err := dsn.Open(ctx, rawDSN)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return &DB{DB: db, Kind: kind, Dialect: Dialects()[kind], DSN: rawDSN}
}

// isolate returns base pointed at the schema (PostgreSQL) or database
// (MySQL) called name.
func isolate(t testing.TB, kind, base, name string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("testdb: parse %s DSN: %v", kind, err)
	}
	if kind == Postgres {
		q := u.Query()
		q.Set("search_path", name)
		u.RawQuery = q.Encode()
	} else {
		u.Path = "/" + name
	}
	return u.String()
}

func drop(t testing.TB, base, stmt string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(context.Background()), 30*time.Second)
	defer cancel()
	admin, _, err := dsn.Open(ctx, base)
	if err != nil {
		t.Errorf("testdb: cleanup: %v", err)
		return
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, stmt); err != nil {
		t.Errorf("testdb: cleanup %q: %v", stmt, err)
	}
}

// namePrefix starts the name of every test schema (PostgreSQL) or database
// (MySQL); the Unix time of its creation follows.
const namePrefix = "sqldlm_t_"

var sweeps sync.Map // kind → *sync.Once

// sweepStale drops, once per process and kind, the test schemas or
// databases created more than an hour ago: leftovers of runs that were
// killed before their cleanup ran.
func sweepStale(ctx context.Context, t testing.TB, kind string, admin *sql.DB) {
	once, _ := sweeps.LoadOrStore(kind, &sync.Once{})
	once.(*sync.Once).Do(func() {
		list := map[string]string{
			Postgres: `SELECT nspname FROM pg_namespace WHERE nspname LIKE 'sqldlm\_t\_%'`,
			MySQL:    `SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'sqldlm\_t\_%'`,
		}[kind]
		rows, err := admin.QueryContext(ctx, list)
		if err != nil {
			t.Logf("testdb: list stale test schemas: %v", err)
			return
		}
		var stale []string
		cutoff := time.Now().Add(-time.Hour).Unix()
		for rows.Next() {
			var name string
			if rows.Scan(&name) != nil {
				continue
			}
			stamp, _, _ := strings.Cut(strings.TrimPrefix(name, namePrefix), "_")
			if created, err := strconv.ParseInt(stamp, 10, 64); err == nil && created < cutoff {
				stale = append(stale, name)
			}
		}
		rows.Close()
		d := Dialects()[kind]
		for _, name := range stale {
			quoted, err := d.QuoteIdentifier(name)
			if err != nil {
				continue
			}
			stmt := map[string]string{Postgres: "DROP SCHEMA IF EXISTS " + quoted + " CASCADE", MySQL: "DROP DATABASE IF EXISTS " + quoted}[kind]
			if _, err := admin.ExecContext(ctx, stmt); err != nil {
				t.Logf("testdb: drop stale %s: %v", name, err)
			}
		}
	})
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Required reports whether SQLDLM_TEST_REQUIRE names kind.
func Required(kind string) bool {
	return slices.Contains(strings.Split(os.Getenv("SQLDLM_TEST_REQUIRE"), ","), kind)
}

var envVars = map[string]string{Postgres: "SQLDLM_TEST_POSTGRES_DSN", MySQL: "SQLDLM_TEST_MYSQL_DSN"}

type server struct {
	once sync.Once
	dsn  string
	why  string // why there is no server, when dsn is empty
}

var servers = map[string]*server{Postgres: {}, MySQL: {}}

// serverDSN returns the DSN of a server of kind, finding or starting it
// once per process, or skips (or fails) t.
func serverDSN(t testing.TB, kind string) string {
	t.Helper()
	s := servers[kind]
	s.once.Do(func() {
		if v := os.Getenv(envVars[kind]); v != "" {
			s.dsn = v
			return
		}
		s.dsn, s.why = startContainer(kind)
	})
	if s.dsn == "" {
		msg := fmt.Sprintf("testdb: no %s server: %s is unset and %s; set %s to run these tests",
			kind, envVars[kind], s.why, envVars[kind])
		if Required(kind) {
			t.Fatalf("%s (SQLDLM_TEST_REQUIRE=%s makes this a failure)", msg, os.Getenv("SQLDLM_TEST_REQUIRE"))
		}
		t.Skip(msg)
	}
	return s.dsn
}
