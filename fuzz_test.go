package sqldlm

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Fuzz targets (RELIABILITY-PLAN §6). Without -fuzz they run their seed
// corpus (below and testdata/fuzz/<name>) as ordinary tests; with
//
//	go test -run '^$' -fuzz '^FuzzValidateName$' .
//
// they search for inputs that break the properties. The targets that go
// through SQLite (FuzzNameRoundTrip, FuzzLocksPrefix) make next to no
// progress under go test -fuzz, which instruments every package for
// coverage, modernc.org/sqlite's transpiled C included; run them from a
// test binary built without -fuzz instead, which mutates inputs without
// coverage guidance:
//
//	go test -c -cover -o sqldlm.test . &&
//	./sqldlm.test -test.run '^$' -test.fuzz '^FuzzNameRoundTrip$' -test.fuzztime 30s -test.fuzzcachedir /tmp/fuzz

// FuzzValidateName: the validators never panic, accept exactly the
// documented inputs, and refuse the others with their sentinel error and a
// message saying what is wrong.
func FuzzValidateName(f *testing.F) {
	for _, s := range slices.Concat(hostileStrings, []string{"", "\xff", "a\x00", "\xc3", "\xed\xa0\x80", strings.Repeat("é", 128), strings.Repeat("p", 1025)}) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		validText := utf8.ValidString(s) && !strings.ContainsRune(s, 0)
		err := ValidateName(s)
		if validName(s) != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidName)) {
			t.Fatalf("ValidateName(%q) = %v", s, err)
		}
		err = ValidatePayload(s)
		if (validText && len(s) <= PayloadMaxBytes) != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidPayload)) {
			t.Fatalf("ValidatePayload(%q) = %v", s, err)
		}
		err = validateOwner(s)
		if (validText && len(s) <= OwnerMaxBytes) != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidOwner)) {
			t.Fatalf("validateOwner(%q) = %v", s, err)
		}
		if err != nil && !strings.Contains(err.Error(), "Config.Owner") {
			t.Fatalf("validateOwner(%q) = %v: does not name the field", s, err)
		}
	})
}

// fuzzClients opens one migrated SQLite database for a fuzz target, with two
// clients on pools of their own.
func fuzzClients(f *testing.F) (a, b *Client) {
	db := testdb.OpenMigrated(f, testdb.SQLite)
	for _, c := range []**Client{&a, &b} {
		pool := testdb.Reopen(f, testdb.SQLite, db.DSN)
		client, err := New(pool.DB, Config{TTL: time.Minute, ReapInterval: ReapDisabled})
		if err != nil {
			f.Fatal(err)
		}
		f.Cleanup(func() { client.Close() })
		*c = client
	}
	return a, b
}

// validName reports ValidateName's rules, written out independently.
func validName(s string) bool {
	return s != "" && len(s) <= NameMaxBytes && utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// FuzzNameRoundTrip: ValidateName accepts exactly the names of 1 to 255
// bytes of UTF-8 without NUL, never panics, and refuses the others with
// ErrInvalidName before touching the database. A valid name is stored and
// read back byte for byte (Locks, Lock.Name), and two distinct valid names
// are distinct locks: both can be held exclusively at once, and each is
// ErrLocked for another client.
func FuzzNameRoundTrip(f *testing.F) {
	for _, s := range slices.Concat(hostileStrings, []string{"", "\xff", "a\x00", strings.Repeat("é", 128)}) {
		f.Add(s, s+" ")
		f.Add(s, strings.ToUpper(s))
	}
	f.Add("x", "x ")
	f.Add("é", "e\u0301")
	f.Add("a%", "ab")
	a, b := fuzzClients(f)
	f.Fuzz(func(t *testing.T, n1, n2 string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var held []*Lock
		defer func() {
			for _, l := range held {
				if err := l.Release(ctx); err != nil {
					t.Errorf("release %q: %v", l.Name(), err)
				}
			}
		}()
		for _, name := range []string{n1, n2} {
			err := ValidateName(name)
			if validName(name) != (err == nil) {
				t.Fatalf("ValidateName(%q) = %v", name, err)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidName) {
					t.Fatalf("ValidateName(%q) = %v: not ErrInvalidName", name, err)
				}
				if _, err := a.TryLock(ctx, name, Exclusive); !errors.Is(err, ErrInvalidName) {
					t.Fatalf("TryLock(%q) = %v, want ErrInvalidName", name, err)
				}
				continue
			}
			if name == n2 && n1 == n2 {
				continue
			}
			l, err := a.TryLock(ctx, name, Exclusive)
			if err != nil {
				t.Fatalf("TryLock(%q) (other name %q): %v", name, n1, err)
			}
			held = append(held, l)
			if l.Name() != name {
				t.Fatalf("Lock.Name() = %q, want %q", l.Name(), name)
			}
			if _, err := b.TryLock(ctx, name, Shared); !errors.Is(err, ErrLocked) {
				t.Fatalf("another client's TryLock(%q) = %v, want ErrLocked", name, err)
			}
		}
		for _, l := range held {
			locks, err := a.Locks(ctx, Filter{Prefix: l.Name()})
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, li := range locks {
				if !strings.HasPrefix(li.Name, l.Name()) {
					t.Fatalf("Locks(Prefix %q) returned %q", l.Name(), li.Name)
				}
				if li.Name == l.Name() {
					found = len(li.Holders) == 1 && li.Holders[0].Token == l.Token()
				}
			}
			if !found {
				t.Fatalf("Locks(Prefix %q) does not show the hold (token %d): %+v", l.Name(), l.Token(), locks)
			}
		}
	})
}

// FuzzLocksPrefix: Filter.Prefix keeps exactly the names that start with
// its bytes (strings.HasPrefix), whatever the prefix holds: LIKE
// wildcards, escapes, invalid UTF-8, NUL, a prefix longer than any name.
func FuzzLocksPrefix(f *testing.F) {
	names := slices.Concat([]string{"a", "ab", "a%c", "a_b", `a\d`, "a\\%", "A", "é", "e\u0301", "x ", "x"}, hostileStrings)
	names = dedupe(names)
	for _, s := range append(names, "", "a%", "a_", `a\`, "\xff", "\x00", "é"[:1], "a\x00") {
		f.Add(s)
	}
	a, _ := fuzzClients(f)
	ctx := context.Background()
	for _, n := range names {
		if _, err := a.TryLock(ctx, n, Exclusive); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, prefix string) {
		locks, err := a.Locks(ctx, Filter{Prefix: prefix})
		if err != nil {
			t.Fatalf("Locks(Prefix %q): %v", prefix, err)
		}
		var want, got []string
		for _, n := range names {
			if strings.HasPrefix(n, prefix) {
				want = append(want, n)
			}
		}
		for _, li := range locks {
			got = append(got, li.Name)
		}
		if strings.Join(dedupe(want), "\x00") != strings.Join(dedupe(got), "\x00") || len(got) != len(want) {
			t.Fatalf("Locks(Prefix %q) = %q, want %q", prefix, got, want)
		}
	})
}
