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
		"://",
		"postgres://%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		d, err := Parse(raw)
		if err != nil {
			if u, perr := url.Parse(raw); perr == nil && u.User != nil {
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
			if d.DriverName != "pgx" || d.DriverDSN != raw {
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
			u, err := url.Parse(raw)
			if err != nil {
				t.Fatalf("Parse(%q) accepted a URL that url.Parse refuses: %v", raw, err)
			}
			cfg, err := mysql.ParseDSN(d.DriverDSN)
			if err != nil {
				t.Fatalf("Parse(%q) made driver DSN %q, which the driver refuses: %v", raw, d.DriverDSN, err)
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
