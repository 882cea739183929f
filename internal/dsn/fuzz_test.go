package dsn

import (
	"net/url"
	"strings"
	"testing"

	"github.com/go-sql-driver/mysql"
)

// FuzzParse: Parse never panics; an error never shows the DSN's password;
// a DSN it accepts names a known dialect with its driver and a host, and
// for MySQL the driver DSN carries exactly the URL's user, password and
// database (nothing in the URL can smuggle in another address, user or
// parameter).
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"postgres://u:p@db.example:6432/app?sslmode=disable",
		"postgresql://u@db.example/app",
		"postgres://u:s3cret-pass@[::1]:5432/app?search_path=locks",
		"mysql://root:s%40cret@10.0.0.5:3307/app?loc=Local",
		"mysql://root@db/app",
		"mysql://root:hunter2@h:3306/db?parseTime=maybe",
		"mysql://root:hunter2@h:bad port/db",
		"mysql://u:pw@h/db?tls=true&timeout=5s",
		"mysql://u:pw@h/db)?x=1",
		"mysql://u:pw@h/a/b",
		"mysql://u:p%2F%40w@h/db%3Fx",
		"mariadb://u:pass)word@h/db",
		"sqlite:///tmp/x.db",
		"sqlite://data/x.db?_pragma=busy_timeout(50)",
		"sqlite://",
		"file:///tmp/x.db",
		"redis://localhost:6379",
		"root@tcp(127.0.0.1:3306)/test",
		"root:pw@tcp(h:3306)/db?parseTime=true",
		"mysql://root@tcp(h:3306)/db",
		"u@unix(/run/m.sock)/db",
		"host=db port=5432 dbname=app password=s3cret",
		"root@db.example:3306/test",
		"pgsql://u@db/app",
		"jdbc:mysql://root:s3cretpw@h/db",
		"://",
		"postgres://%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		d, err := Parse(raw)
		if err != nil {
			inner := raw
			if u, perr := url.Parse(raw); perr == nil && u.Opaque != "" {
				inner = strings.TrimPrefix(raw, u.Scheme+":") // jdbc:mysql://…: the URL inside
			}
			if u, perr := url.Parse(inner); perr == nil && u.User != nil {
				if pw, ok := u.User.Password(); ok && len(pw) >= 4 && strings.Count(raw, pw) == 1 &&
					!strings.Contains(redactedParts(u), pw) && strings.Contains(err.Error(), pw) {
					t.Fatalf("Parse(%q) error shows the password %q: %v", raw, pw, err)
				}
			}
			return
		}
		if d.Host == "" {
			t.Fatalf("Parse(%q) = %+v: no host", raw, d)
		}
		switch d.Dialect {
		case "postgres":
			if d.DriverName != "pgx" || d.DriverDSN != strings.TrimSpace(raw) {
				t.Fatalf("Parse(%q) = %+v", raw, d)
			}
		case "sqlite":
			if d.DriverName != "sqlite" || !strings.HasPrefix(d.DriverDSN, "file:") {
				t.Fatalf("Parse(%q) = %+v", raw, d)
			}
		case "mysql":
			if d.DriverName != "mysql" {
				t.Fatalf("Parse(%q) = %+v", raw, d)
			}
			cfg, err := mysql.ParseDSN(d.DriverDSN)
			if err != nil {
				t.Fatalf("Parse(%q) made driver DSN %q, which the driver refuses: %v", raw, d.DriverDSN, err)
			}
			rest := strings.TrimSpace(raw)
			if scheme, after, ok := strings.Cut(rest, "://"); ok && (strings.EqualFold(scheme, "mysql") || strings.EqualFold(scheme, "mariadb")) {
				rest = after
			}
			if isDriverForm(rest) {
				// go-sql-driver's form: what the driver reads in it is
				// what it reads in the driver DSN.
				in, err := mysql.ParseDSN(rest)
				if err != nil {
					t.Fatalf("Parse(%q) accepted a DSN the driver refuses: %v", raw, err)
				}
				if cfg.User != in.User || cfg.Passwd != in.Passwd || cfg.DBName != in.DBName || cfg.Net != in.Net || cfg.Addr != in.Addr {
					t.Fatalf("Parse(%q): driver DSN %q reads differently from the input", raw, d.DriverDSN)
				}
				break
			}
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil {
				t.Fatalf("Parse(%q) accepted a URL that url.Parse refuses: %v", raw, err)
			}
			pw, _ := u.User.Password()
			if cfg.User != u.User.Username() || cfg.Passwd != pw {
				t.Fatalf("Parse(%q): driver DSN %q has user %q password %q, want %q %q", raw, d.DriverDSN, cfg.User, cfg.Passwd, u.User.Username(), pw)
			}
			if want := strings.TrimPrefix(u.Path, "/"); cfg.DBName != want {
				t.Fatalf("Parse(%q): driver DSN %q has database %q, want %q", raw, d.DriverDSN, cfg.DBName, want)
			}
			if cfg.Net != "tcp" || cfg.Addr != d.Host {
				t.Fatalf("Parse(%q): driver DSN %q reaches %s(%s), want tcp(%s)", raw, d.DriverDSN, cfg.Net, cfg.Addr, d.Host)
			}
		default:
			t.Fatalf("Parse(%q) = %+v: unknown dialect", raw, d)
		}
	})
}

// redactedParts is the DSN without its user info: a password that also
// appears there may rightly show in a message.
func redactedParts(u *url.URL) string {
	v := *u
	v.User = nil
	return v.String() + " " + u.Scheme
}
