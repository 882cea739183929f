// Package dsn turns the DSNs users have into a database/sql driver name and
// driver DSN. It reads:
//
//	postgres://user:pass@host:5432/db?sslmode=disable&search_path=locks  (pgx; or postgresql://)
//	host=db.example port=5432 dbname=app user=u sslmode=disable          (libpq's keyword form, pgx)
//	mysql://user:pass@host:3306/db?tls=true                              (go-sql-driver/mysql; or mariadb://)
//	user:pass@tcp(host:3306)/db?tls=true                                 (go-sql-driver's own form, also after mysql://)
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
	"io/fs"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"
)

// Schemes lists the accepted DSN schemes, for short messages.
const Schemes = "postgres:// (or postgresql://), mysql:// (or mariadb://), sqlite://"

// Forms lists every accepted DSN form, for messages about a DSN refused.
const Forms = `postgres://user:pass@host:5432/db (or postgresql://); ` +
	`libpq's "host=H port=5432 dbname=DB user=U"; ` +
	`mysql://user:pass@host:3306/db (or mariadb://); ` +
	`go-sql-driver's user:pass@tcp(host:3306)/db; ` +
	`sqlite:///absolute/path.db or sqlite://relative/path.db`

// DSN is a parsed sqldlm DSN.
type DSN struct {
	Dialect    string // "postgres", "mysql" or "sqlite"
	DriverName string // for sql.Open
	DriverDSN  string // for sql.Open
	Host       string // host:port, or the file path for SQLite; for messages
	User       string // the user to log in as, when the DSN says; for messages
	Database   string // the database (PostgreSQL, MySQL), when the DSN says; for messages
}

// Parse parses a DSN in any of the forms the package comment lists. A DSN
// in none of them gets an error that lists the forms and, where it can
// guess what was meant, that DSN written in a form that works.
func Parse(raw string) (DSN, error) {
	raw = strings.TrimSpace(raw)
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || strings.ContainsAny(scheme, " =@/") {
		// No scheme: go-sql-driver's form or libpq's keyword form.
		switch {
		case isDriverForm(raw):
			return parseMySQLDriver(raw)
		case keywordForm.MatchString(raw):
			return parsePGKeywords(raw)
		}
		return DSN{}, refused(raw, "has no scheme and is not in go-sql-driver's or libpq's form")
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		u, err := url.Parse(raw)
		if err != nil {
			return DSN{}, fmt.Errorf("parse DSN %q: %w", redact(raw), urlErr(err))
		}
		host := u.Host
		if host == "" {
			host = "localhost:5432"
		} else if u.Port() == "" && !strings.Contains(host, ",") {
			host = net.JoinHostPort(u.Hostname(), "5432")
		}
		return DSN{Dialect: "postgres", DriverName: "pgx", DriverDSN: raw, Host: host,
			User: u.User.Username(), Database: strings.TrimPrefix(u.Path, "/")}, nil
	case "mysql", "mariadb":
		if isDriverForm(rest) {
			return parseMySQLDriver(rest)
		}
		u, err := url.Parse(raw)
		if err != nil {
			return DSN{}, fmt.Errorf("parse DSN %q: %w", redact(raw), urlErr(err))
		}
		return parseMySQL(u)
	case "sqlite", "sqlite3", "file":
		u, err := url.Parse(raw)
		if err != nil {
			return DSN{}, fmt.Errorf("parse DSN %q: %w", redact(raw), urlErr(err))
		}
		return parseSQLite(u)
	default:
		return DSN{}, refused(raw, fmt.Sprintf("has the unknown scheme %q", scheme))
	}
}

// driverForm matches go-sql-driver's user[:pass]@net(addr)/db (the user
// information and the address optional), the protocol being one the
// driver knows.
var driverForm = regexp.MustCompile(`^(?:[^/]*@)?(?:tcp|tcp4|tcp6|unix)(?:\([^)]*\))?/|^[^/()]*@/`)

func isDriverForm(s string) bool { return driverForm.MatchString(s) }

// keywordForm matches a libpq keyword/value connection string: it starts
// with "keyword=".
var keywordForm = regexp.MustCompile(`^[A-Za-z_]+\s*=`)

// parseMySQLDriver parses go-sql-driver's own DSN form.
func parseMySQLDriver(s string) (DSN, error) {
	cfg, err := mysql.ParseDSN(s)
	if err != nil {
		return DSN{}, fmt.Errorf("go-sql-driver DSN %q: %w (the form is user:pass@tcp(host:3306)/db?param=value)", redact(s), err)
	}
	if cfg.DBName == "" {
		return DSN{}, fmt.Errorf("mysql DSN %q names no database: use user:pass@tcp(host:3306)/DATABASE", redact(s))
	}
	if cfg.User == "" && cfg.Passwd != "" {
		return DSN{}, fmt.Errorf("mysql DSN %q has a password but no user: use USER:pass@tcp(host:3306)/db", redact(s))
	}
	return DSN{Dialect: "mysql", DriverName: "mysql", DriverDSN: cfg.FormatDSN(), Host: cfg.Addr,
		User: cfg.User, Database: cfg.DBName}, nil
}

// parsePGKeywords parses libpq's keyword/value form, as pgx will.
func parsePGKeywords(s string) (DSN, error) {
	cfg, err := pgconn.ParseConfig(s)
	if err != nil {
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) && pe.Unwrap() != nil {
			err = pe.Unwrap()
		}
		return DSN{}, fmt.Errorf("PostgreSQL DSN %q: %w (the form is host=H port=5432 dbname=DB user=U)", redact(s), err)
	}
	host := cfg.Host
	if !strings.HasPrefix(host, "/") {
		host = net.JoinHostPort(host, fmt.Sprint(cfg.Port))
	}
	return DSN{Dialect: "postgres", DriverName: "pgx", DriverDSN: s, Host: host, User: cfg.User, Database: cfg.Database}, nil
}

// refused is the error for a DSN in no form Parse reads: why, what it may
// have meant in a form that works, and the forms.
func refused(raw, why string) error {
	msg := fmt.Sprintf("DSN %q %s", redact(raw), why)
	var shown []string
	for _, s := range suggestions(raw) {
		s = redact(s)
		if !slices.ContainsFunc(Passwords(raw), func(pw string) bool { return strings.Contains(s, pw) }) {
			shown = append(shown, s)
		}
	}
	if len(shown) > 0 {
		return errors.New(msg + "; did you mean " + strings.Join(shown, " or ") + "? The forms sqldlm reads: " + Forms)
	}
	return errors.New(msg + "; the forms sqldlm reads: " + Forms)
}

// schemeAliases are schemes users write for the dialects sqldlm reads.
var schemeAliases = map[string]string{
	"pg": "postgres", "pgsql": "postgres", "psql": "postgres", "postgre": "postgres", "pgx": "postgres",
	"jdbc:postgresql": "postgres", "jdbc:mysql": "mysql", "jdbc:mariadb": "mysql", "maria": "mysql",
	"mysqlx": "mysql", "tcp": "mysql", "sqlite3": "sqlite", "sqlite-file": "sqlite",
}

// hostPortDB matches user[:pass]@host[:port]/db with no scheme.
var hostPortDB = regexp.MustCompile(`^([^@/]+)@([^/@:()]+)(?::(\d+))?/([^/?]+)(\?.*)?$`)

// suggestions guesses what a refused DSN meant, written in forms Parse
// reads.
func suggestions(raw string) []string {
	if scheme, rest, ok := strings.Cut(raw, "://"); ok {
		if to, ok := schemeAliases[strings.ToLower(scheme)]; ok {
			return []string{to + "://" + rest}
		}
		return nil
	}
	if m := hostPortDB.FindStringSubmatch(raw); m != nil {
		user, host, port, db, query := m[1], m[2], m[3], m[4], m[5]
		addr := host
		if port != "" {
			addr += ":" + port
		}
		switch port {
		case "5432":
			return []string{"postgres://" + raw}
		case "3306":
			return []string{"mysql://" + raw, user + "@tcp(" + addr + ")/" + db + query}
		}
		return []string{"postgres://" + raw, "mysql://" + raw}
	}
	lower := strings.ToLower(raw)
	if strings.ContainsAny(raw, "@ =") {
		return nil
	}
	if strings.HasSuffix(lower, ".db") || strings.HasSuffix(lower, ".sqlite") || strings.HasSuffix(lower, ".sqlite3") ||
		strings.HasPrefix(raw, "/") || strings.HasPrefix(raw, "./") {
		return []string{"sqlite://" + strings.TrimPrefix(raw, "./")}
	}
	return nil
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
	return DSN{Dialect: "mysql", DriverName: "mysql", DriverDSN: cfg.FormatDSN(), Host: host, User: cfg.User, Database: db}, nil
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
// An SQLite file that does not exist is created. The error for a database
// that cannot be reached says why, as far as it can tell: a refused login,
// no such database, nothing listening, an unknown host, or no answer.
func Open(ctx context.Context, raw string) (*sql.DB, DSN, error) {
	return open(ctx, raw, true)
}

// OpenExisting is Open, except that an SQLite file that does not exist is
// an error rather than created: for commands that only read or change
// sqldlm's tables, which a fresh file cannot have.
func OpenExisting(ctx context.Context, raw string) (*sql.DB, DSN, error) {
	return open(ctx, raw, false)
}

func open(ctx context.Context, raw string, create bool) (*sql.DB, DSN, error) {
	d, err := Parse(raw)
	if err != nil {
		return nil, DSN{}, err
	}
	driverDSN := d.DriverDSN
	if d.Dialect == "sqlite" && !create {
		if _, err := os.Stat(d.Host); errors.Is(err, fs.ErrNotExist) {
			return nil, DSN{}, fmt.Errorf("no SQLite database at %s: the file does not exist (`sqldlm migrate up` creates it)", d.Host)
		}
		// Never create it, even if it goes between the check and the open.
		if !strings.Contains(driverDSN, "mode=") {
			driverDSN += "&mode=rw"
		}
	}
	db, err := sql.Open(d.DriverName, driverDSN)
	if err != nil {
		return nil, DSN{}, fmt.Errorf("open %s database at %s: %w", d.Dialect, d.Host, err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, DSN{}, reachErr(d, err)
	}
	return db, d, nil
}

// reachErr says why the database d names could not be reached.
func reachErr(d DSN, err error) error {
	var (
		pgErr  *pgconn.PgError
		myErr  *mysql.MySQLError
		dnsErr *net.DNSError
	)
	user := cmp.Or(d.User, "(the default user)")
	switch {
	case errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000"),
		errors.As(err, &myErr) && (myErr.Number == 1045 || myErr.Number == 1698):
		return fmt.Errorf("the %s server at %s refused the login of user %s: check the user and password: %w", d.Dialect, d.Host, user, err)
	case errors.As(err, &pgErr) && pgErr.Code == "3D000", errors.As(err, &myErr) && myErr.Number == 1049:
		return fmt.Errorf("the %s server at %s has no database %q: create it, or name another in the DSN: %w", d.Dialect, d.Host, d.Database, err)
	case errors.As(err, &myErr) && myErr.Number == 1044:
		return fmt.Errorf("the %s server at %s does not let user %s use database %q: grant it access: %w", d.Dialect, d.Host, user, d.Database, err)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("%s server at %s: unknown host %q: %w", d.Dialect, d.Host, dnsErr.Name, err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing accepts %s connections at %s (connection refused): is the server running on that address and port? %w", d.Dialect, d.Host, err)
	case d.Dialect == "sqlite":
		return fmt.Errorf("cannot open the SQLite database %s: its directory must exist and the file must be readable and writable: %w", d.Host, err)
	}
	return fmt.Errorf("%s server at %s does not answer: %w", d.Dialect, d.Host, err)
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
