// Package dsn turns sqldlm's DSN URLs into a database/sql driver name and
// driver DSN. The scheme picks the dialect:
//
//	postgres://user:pass@host:5432/db?sslmode=disable&search_path=locks  (pgx)
//	mysql://user:pass@host:3306/db?tls=true                              (go-sql-driver/mysql)
//	sqlite:///abs/path/locks.db   sqlite://relative/locks.db            (modernc.org/sqlite)
//
// It is used by the CLI and the tests; the library itself takes a *sql.DB.
package dsn

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"
)

// Schemes lists the accepted DSN schemes, for error messages.
const Schemes = "postgres:// (or postgresql://), mysql://, sqlite://"

// DSN is a parsed sqldlm DSN.
type DSN struct {
	Dialect    string // "postgres", "mysql" or "sqlite"
	DriverName string // for sql.Open
	DriverDSN  string // for sql.Open
	Host       string // host:port, or the file path for SQLite; for messages
}

// Parse parses a sqldlm DSN URL. An unknown or missing scheme gets an error
// that lists the valid ones.
func Parse(raw string) (DSN, error) {
	scheme, _, ok := strings.Cut(raw, "://")
	if !ok {
		return DSN{}, fmt.Errorf("DSN %q has no scheme: start it with %s", redact(raw), Schemes)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return DSN{}, fmt.Errorf("parse DSN %q: %w", redact(raw), urlErr(err))
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		host := u.Host
		if host == "" {
			host = "localhost:5432"
		} else if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "5432")
		}
		return DSN{Dialect: "postgres", DriverName: "pgx", DriverDSN: raw, Host: host}, nil
	case "mysql", "mariadb":
		return parseMySQL(u)
	case "sqlite", "sqlite3", "file":
		return parseSQLite(u)
	default:
		return DSN{}, fmt.Errorf("unknown DSN scheme %q: use %s", scheme, Schemes)
	}
}

func parseMySQL(u *url.URL) (DSN, error) {
	host := "127.0.0.1:3306"
	if u.Host != "" {
		host = net.JoinHostPort(u.Hostname(), cmp.Or(u.Port(), "3306"))
	}
	db := strings.TrimPrefix(u.Path, "/")
	if db == "" {
		return DSN{}, errors.New("mysql DSN names no database: use mysql://user:pass@host:3306/DATABASE")
	}
	// Let the driver parse the query parameters (tls, timeout, loc, system
	// variables), then set the parts that came from the URL: spliced into
	// the driver's DSN, a database name with "?" or "/" (escaped in the
	// URL) or a host with ")" would be cut or misread.
	cfg, err := mysql.ParseDSN("/?" + u.RawQuery)
	if err != nil {
		return DSN{}, fmt.Errorf("mysql DSN parameters: %w", err)
	}
	cfg.Net, cfg.Addr, cfg.DBName = "tcp", host, db
	cfg.User = u.User.Username()
	cfg.Passwd, _ = u.User.Password()
	if cfg.User == "" && cfg.Passwd != "" {
		return DSN{}, errors.New("mysql DSN has a password but no user: use mysql://USER:pass@host:3306/db")
	}
	return DSN{Dialect: "mysql", DriverName: "mysql", DriverDSN: cfg.FormatDSN(), Host: host}, nil
}

// sqliteDefaults are added unless the DSN sets them: WAL lets readers and a
// writer work at once, and a busy timeout makes writers wait for each other
// rather than fail.
var sqliteDefaults = []string{"journal_mode(WAL)", "busy_timeout(10000)"}

func parseSQLite(u *url.URL) (DSN, error) {
	path := u.Host + u.Path // sqlite://rel/x.db puts "rel" in Host; sqlite:///abs/x.db has an empty Host
	if path == "" {
		return DSN{}, errors.New("sqlite DSN names no file: use sqlite:///absolute/path.db or sqlite://relative/path.db")
	}
	q := u.Query()
	have := strings.Join(q["_pragma"], ",")
	for _, p := range sqliteDefaults {
		if !strings.Contains(have, p[:strings.Index(p, "(")]) {
			q.Add("_pragma", p)
		}
	}
	return DSN{Dialect: "sqlite", DriverName: "sqlite", DriverDSN: "file:" + path + "?" + q.Encode(), Host: path}, nil
}

// Open parses raw, opens the database and checks within ctx that it answers.
// A database that does not answer gets an error naming its host.
func Open(ctx context.Context, raw string) (*sql.DB, DSN, error) {
	d, err := Parse(raw)
	if err != nil {
		return nil, DSN{}, err
	}
	db, err := sql.Open(d.DriverName, d.DriverDSN)
	if err != nil {
		return nil, DSN{}, fmt.Errorf("open %s database at %s: %w", d.Dialect, d.Host, err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, DSN{}, fmt.Errorf("%s server at %s does not answer: %w", d.Dialect, d.Host, err)
	}
	return db, d, nil
}

// redact hides the passwords of a DSN for messages.
func redact(raw string) string { return Redact(raw) }

// urlErr drops the URL (with its password) that url.Error repeats.
func urlErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
