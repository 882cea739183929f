// Package sqlutil holds the small helpers that sqldlm's dialect
// implementations (dialect/postgres, dialect/mysql, dialect/sqlite) share.
// It is not part of the dialect contract: the dialect package states what a
// dialect must do, this one only saves writing the same lines twice.
package sqlutil

import (
	"database/sql"
	"database/sql/driver"
	"sort"
	"time"
)

// Unique returns s without repeated elements, in first-seen order. It
// reuses s's storage.
func Unique[T comparable](s []T) []T {
	seen := make(map[T]bool, len(s))
	out := s[:0]
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// SortedByName returns the values of byName for names, in name order
// (byte-wise). It sorts names.
func SortedByName[T any](byName map[string]*T, names []string) []T {
	sort.Strings(names)
	out := make([]T, 0, len(names))
	for _, n := range names {
		out = append(out, *byName[n])
	}
	return out
}

// Discard makes database/sql close conn's physical connection instead of
// returning it to the pool, so that no session state (an advisory lock, a
// GET_LOCK, a LISTEN) leaks to the pool's next user.
func Discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
}

// TimeMicros is the time of v microseconds since the Unix epoch, in UTC
// (how the dialects read the server's timestamps).
func TimeMicros(v int64) time.Time { return time.UnixMicro(v).UTC() }

// DurationMicros is v microseconds as a Duration.
func DurationMicros(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
