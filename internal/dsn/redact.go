package dsn

import (
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// hidden replaces a password in messages.
const hidden = "xxxxx"

// passwordSetting matches a setting that carries a password, in a
// key=value connection string (password=..., password='...') or a URL's
// query (?password=...&sslpassword=...): group 1 is everything up to the
// value, group 2 the value.
var passwordSetting = regexp.MustCompile(`(?i)((?:^|[\s?&;])(?:ssl)?(?:password|passwd|pass|pwd)\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&;]*)`)

// Redact returns raw with every password in it replaced by "xxxxx", so that
// it can be shown: in a URL, the user information (user:password@) and
// query parameters that carry a password (password=, sslpassword=); in a
// key=value connection string, password=... (quoted or not); in
// go-sql-driver's form, user:password@tcp(host)/db. What it cannot parse as
// a URL keeps only what follows its last "@".
func Redact(raw string) string {
	// A URL inside a scheme prefix (jdbc:mysql://…) parses as an opaque
	// part without user information: redact the inner URL.
	if scheme, rest, ok := strings.Cut(raw, ":"); ok && !strings.HasPrefix(rest, "//") && strings.Contains(rest, "://") &&
		!strings.ContainsAny(scheme, "/@ =") {
		return scheme + ":" + Redact(rest)
	}
	if strings.Contains(raw, "://") {
		if u, err := url.Parse(raw); err == nil {
			if u.RawQuery != "" {
				q := u.Query()
				changed := false
				for k := range q {
					if isPasswordKey(k) {
						q[k] = []string{hidden}
						changed = true
					}
				}
				if changed {
					u.RawQuery = q.Encode()
				}
			}
			return u.Redacted() // the user information's password, as "xxxxx" (= hidden)
		}
		if i := strings.LastIndex(raw, "@"); i >= 0 {
			raw = "…@" + raw[i+1:]
		}
		return passwordSetting.ReplaceAllString(raw, "${1}"+hidden)
	}
	raw = passwordSetting.ReplaceAllString(raw, "${1}"+hidden)
	// go-sql-driver: user:password@protocol(address)/db
	if i := strings.LastIndex(raw, "@"); i >= 0 {
		if j := strings.IndexByte(raw[:i], ':'); j >= 0 && !strings.ContainsAny(raw[:j], " =") {
			raw = raw[:j+1] + hidden + raw[i:]
		}
	}
	return raw
}

func isPasswordKey(k string) bool {
	switch strings.ToLower(k) {
	case "password", "sslpassword", "passwd", "pass", "pwd":
		return true
	}
	return false
}

// Passwords returns the passwords raw carries, as written and decoded, for
// scrubbing them from text that may have picked them up elsewhere (a
// driver's error message).
func Passwords(raw string) []string {
	var out []string
	add := func(s string) {
		s = strings.Trim(s, "'")
		if s != "" && s != hidden && !slices.Contains(out, s) {
			out = append(out, s)
		}
		if d, err := url.QueryUnescape(s); err == nil && d != s && d != "" && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	if strings.Contains(raw, "://") {
		if u, err := url.Parse(raw); err == nil {
			if pw, ok := u.User.Password(); ok {
				add(pw)
			}
			for k, vs := range u.Query() {
				if isPasswordKey(k) {
					for _, v := range vs {
						add(v)
					}
				}
			}
		}
		// The user information as written (percent-encoded), whether or
		// not the URL parses.
		if _, rest, ok := strings.Cut(raw, "://"); ok {
			if i := strings.LastIndex(rest, "@"); i >= 0 {
				if _, pw, ok := strings.Cut(rest[:i], ":"); ok {
					add(pw)
				}
			}
		}
	} else if i := strings.LastIndex(raw, "@"); i >= 0 {
		if j := strings.IndexByte(raw[:i], ':'); j >= 0 {
			add(raw[j+1 : i])
		}
	}
	for _, m := range passwordSetting.FindAllStringSubmatch(raw, -1) {
		add(m[2])
	}
	return out
}

// Scrub replaces every password of the DSNs in text by "xxxxx". Passwords
// shorter than 4 bytes are left alone: replacing them would garble the
// message, and Redact has already hidden them where sqldlm prints a DSN.
func Scrub(text string, dsns ...string) string {
	for _, raw := range dsns {
		for _, pw := range Passwords(raw) {
			if len(pw) >= 4 {
				text = strings.ReplaceAll(text, pw, hidden)
			}
		}
	}
	return text
}
