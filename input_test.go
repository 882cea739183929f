package sqldlm

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Bad input (RELIABILITY-PLAN §6, scenario S22): every invalid name, owner
// and payload gets its sentinel error, on every dialect, and nothing reaches
// the database.

// invalidNames are names ValidateName must refuse, with the words its error
// must contain.
var invalidNames = []struct{ name, want string }{
	{"", "the name is empty"},
	{strings.Repeat("n", NameMaxBytes+1), "256 bytes long, over the limit of 255"},
	{strings.Repeat("é", 128), "256 bytes long, over the limit of 255"}, // 128 runes, 256 bytes
	{"bad\xffutf8", "is not valid UTF-8"},
	{"\xc3", "is not valid UTF-8"},         // a truncated two-byte sequence
	{"\xed\xa0\x80", "is not valid UTF-8"}, // a UTF-16 surrogate encoded as UTF-8
	{"nul\x00inside", "contains a NUL byte"},
	{"\x00", "contains a NUL byte"},
}

var invalidPayloads = []struct{ payload, want string }{
	{strings.Repeat("p", PayloadMaxBytes+1), "1025 bytes, over the limit of 1024"},
	{"bad\xff", "is not valid UTF-8"},
	{"nul\x00inside", "contains a NUL byte"},
}

var invalidOwners = []struct{ owner, want string }{
	{strings.Repeat("o", OwnerMaxBytes+1), "256 bytes long: the limit is 255"},
	{"host\xff", "is not valid UTF-8"},
	{"a\x00b", "contains a NUL byte"},
}

// countRows returns the row count of each of sqldlm's data tables.
func tableRows(t *testing.T, db *sql.DB) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, table := range []string{"sqldlm_leases", "sqldlm_locks", "sqldlm_holders", "sqldlm_waiters", "sqldlm_audit"} {
		var n int
		require.NoError(t, db.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM `+table).Scan(&n), table)
		out[table] = n
	}
	return out
}

func TestBadInputIsRejectedAndWritesNothing(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		empty := tableRows(t, b.db.DB)
		require.Equal(t, map[string]int{"sqldlm_leases": 0, "sqldlm_locks": 0, "sqldlm_holders": 0, "sqldlm_waiters": 0, "sqldlm_audit": 0}, empty)

		for _, tc := range invalidOwners {
			c, err := New(b.db.DB, Config{Owner: tc.owner})
			require.Nil(t, c)
			require.ErrorIs(t, err, ErrInvalidOwner, "owner %q", tc.owner)
			require.ErrorContains(t, err, "Config.Owner")
			require.ErrorContains(t, err, tc.want)
		}

		c := b.client(t, Config{Audit: true})
		for _, tc := range invalidNames {
			check := func(what string, err error) {
				t.Helper()
				require.ErrorIs(t, err, ErrInvalidName, "%s(%q)", what, tc.name)
				require.ErrorContains(t, err, tc.want, "%s(%q)", what, tc.name)
			}
			_, err := c.TryLock(ctx, tc.name, Exclusive)
			check("TryLock", err)
			_, err = c.Lock(ctx, tc.name, Shared)
			check("Lock", err)
			check("Do", c.Do(ctx, tc.name, Exclusive, func(context.Context) error {
				t.Fatal("Do ran its function for an invalid name")
				return nil
			}))
			_, err = c.LockAll(ctx, []Request{{Name: "valid/first", Mode: Exclusive}, {Name: tc.name, Mode: Exclusive}})
			check("LockAll", err)
			check("ValidateName", ValidateName(tc.name))
			tx, err := b.db.BeginTx(ctx, nil)
			require.NoError(t, err)
			_, err = c.TryLockTx(ctx, tx, tc.name, Exclusive)
			check("TryLockTx", err)
			require.NoError(t, tx.Rollback())
		}
		for _, tc := range invalidPayloads {
			_, err := c.TryLock(ctx, "payload/bad", Exclusive, WithPayload(tc.payload))
			require.ErrorIs(t, err, ErrInvalidPayload, "payload %q", tc.payload)
			require.ErrorContains(t, err, tc.want)
			_, err = c.LockAll(ctx, []Request{{Name: "payload/bad", Mode: Exclusive, Payload: tc.payload}})
			require.ErrorIs(t, err, ErrInvalidPayload, "payload %q", tc.payload)
		}
		require.Equal(t, empty, tableRows(t, b.db.DB), "a rejected request wrote to the database")

		// SetPayload with a bad payload leaves the stored payload alone.
		l, err := c.TryLock(ctx, "payload/held", Exclusive, WithPayload("step 1"))
		require.NoError(t, err)
		for _, tc := range invalidPayloads {
			require.ErrorIs(t, l.SetPayload(ctx, tc.payload), ErrInvalidPayload)
		}
		require.Equal(t, "step 1", l.Payload())
		locks, err := c.Locks(ctx, Filter{Prefix: "payload/held"})
		require.NoError(t, err)
		require.Len(t, locks, 1)
		require.Equal(t, "step 1", locks[0].Holders[0].Payload)

		// Filters that no stored name can match (invalid UTF-8, NUL) match
		// nothing instead of failing or matching something else.
		for _, s := range []string{"\xff", "payload/held\x00", "payload/\xc3"} {
			locks, err := c.Locks(ctx, Filter{Prefix: s})
			require.NoError(t, err, "Locks(Prefix %q)", s)
			require.Empty(t, locks, "Locks(Prefix %q)", s)
			locks, err = c.Locks(ctx, Filter{Owner: s})
			require.NoError(t, err, "Locks(Owner %q)", s)
			require.Empty(t, locks, "Locks(Owner %q)", s)
			entries, err := c.AuditLog(ctx, AuditFilter{Name: s})
			require.NoError(t, err, "AuditLog(Name %q)", s)
			require.Empty(t, entries, "AuditLog(Name %q)", s)
		}
		require.NoError(t, l.Release(ctx))
	})
}

// hostileStrings are valid names, owners and payloads that would change a
// statement's meaning if they were ever spliced into SQL, or that a LIKE
// pattern, a collation or a normalization would confuse. Each must be
// stored and read back byte for byte, and stay distinct from every other.
var hostileStrings = []string{
	"'; DROP TABLE sqldlm_locks; --",
	`"; DROP TABLE sqldlm_holders; --`,
	"`; DROP TABLE sqldlm_leases; --",
	"') OR ('1'='1",
	`a\`, `a\\`, `a\'`, `\0`, `\x00`, `\n`,
	"a%", "ab", "a_", "a_b", "a%c", "%", "_", "*",
	"$1", "?", "?, ?", ":name", "@var", "@@timestamp",
	"x", "x ", " x", "X", "x\t", "x\n",
	"é", "e\u0301", // NFC and NFD forms of the same text
	"ß", "ss", "SS", "ǅ", "Ǆ", "ǆ", // case folding and collation expansions
	"İ", "i", "I", "ı",
	"\u00a0", "\u200b", "\ufeff", "\U0001f512", // no-break space, zero-width space, BOM, an emoji
	strings.Repeat("z", NameMaxBytes),
	strings.Repeat("z", NameMaxBytes-1) + " ",
}

// TestHostileStringsAreData: names, owners, payloads and filters made of SQL
// metacharacters, padding, case and Unicode variants are stored and matched
// as the exact bytes they are, on every dialect.
func TestHostileStringsAreData(t *testing.T) {
	t.Parallel()
	require.Len(t, dedupe(hostileStrings), len(hostileStrings), "hostileStrings has duplicates")
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		owner := `o'; DROP TABLE sqldlm_leases; -- \ % _ $1 ? "`
		a := b.client(t, Config{Owner: owner, Audit: true})
		other := b.client(t, Config{Owner: "other"})
		held := map[string]*Lock{}
		for i, name := range hostileStrings {
			payload := "p" + strings.Repeat(name, 3)[:min(3*len(name), PayloadMaxBytes-1)]
			l, err := a.TryLock(ctx, name, Exclusive, WithPayload(payload))
			require.NoError(t, err, "name %d %q: a distinct name must be a distinct lock", i, name)
			held[name] = l
			// The same bytes are the same lock.
			_, err = other.TryLock(ctx, name, Exclusive)
			require.ErrorIs(t, err, ErrLocked, "name %q", name)
		}

		locks, err := a.Locks(ctx, Filter{})
		require.NoError(t, err)
		var got []string
		for _, li := range locks {
			got = append(got, li.Name)
			require.Len(t, li.Holders, 1, "name %q", li.Name)
			require.Equal(t, owner, li.Holders[0].Owner, "name %q", li.Name)
			require.Equal(t, held[li.Name].Payload(), li.Holders[0].Payload, "name %q", li.Name)
			require.Equal(t, held[li.Name].Token(), li.Holders[0].Token, "name %q", li.Name)
		}
		require.ElementsMatch(t, hostileStrings, got, "names must come back byte for byte")

		// A prefix is a literal byte prefix: no LIKE wildcard, escape,
		// padding or case folding.
		for _, prefix := range append(slices.Clone(hostileStrings), "a", `a\`, "x", "") {
			var want []string
			for _, n := range hostileStrings {
				if strings.HasPrefix(n, prefix) {
					want = append(want, n)
				}
			}
			locks, err := a.Locks(ctx, Filter{Prefix: prefix})
			require.NoError(t, err, "prefix %q", prefix)
			got := make([]string, 0, len(locks))
			for _, li := range locks {
				got = append(got, li.Name)
			}
			require.ElementsMatch(t, want, got, "Locks(Prefix %q)", prefix)
		}
		locks, err = a.Locks(ctx, Filter{Prefix: "a%"})
		require.NoError(t, err)
		require.Len(t, locks, 2, "a%% matches a%% and a%%c only, never ab")
		locks, err = a.Locks(ctx, Filter{Owner: owner})
		require.NoError(t, err)
		require.Len(t, locks, len(hostileStrings))

		// The audit log's name filter is an exact match too.
		for _, name := range hostileStrings {
			entries, err := a.AuditLog(ctx, AuditFilter{Name: name})
			require.NoError(t, err, "name %q", name)
			require.Len(t, entries, 1, "AuditLog(Name %q)", name)
			require.Equal(t, name, entries[0].Name)
			require.Equal(t, owner, entries[0].Owner)
			require.Equal(t, held[name].Payload(), entries[0].Payload)
		}

		for _, name := range hostileStrings {
			require.NoError(t, held[name].Release(ctx), "name %q", name)
		}
		counts := tableRows(t, b.db.DB)
		require.Zero(t, counts["sqldlm_holders"], "every table is still there and every hold released")
		require.Zero(t, b.count(t, `SELECT COUNT(*) FROM `+testdb.Holds(b.kind)), "every hold released, in the names' rows too")
		require.Equal(t, len(hostileStrings), counts["sqldlm_locks"], "one name row per distinct name")
	})
}

func dedupe(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

// A mysql dialect on a pgx pool is refused at New and at Migrate, before any
// statement is sent.
func TestWrongDialectForDriver(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.Postgres)
	_, err := New(db.DB, Config{Dialect: mysql.Dialect(), ConnectTimeout: 5 * time.Second})
	require.ErrorContains(t, err, "Config.Dialect is mysql but the database's driver")
	require.ErrorContains(t, err, "use postgres.Dialect()")
	err = Migrate(testCtx(t), db.DB, mysql.Dialect())
	require.ErrorContains(t, err, "Config.Dialect is mysql but the database's driver")
	var n int
	require.NoError(t, db.QueryRowContext(testCtx(t), `SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()`).Scan(&n))
	require.Zero(t, n, "nothing was created")
}

// Migrate against a server that does not answer returns within its
// context's deadline with an error naming the host.
func TestMigrateUnreachableServer(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ driver, dsn string }{
		{"pgx", "postgres://u@192.0.2.1:5432/db?connect_timeout=60"},
		{"mysql", "u@tcp(192.0.2.1:3306)/db"},
	} {
		t.Run(tt.driver, func(t *testing.T) {
			t.Parallel()
			db, err := sql.Open(tt.driver, tt.dsn)
			require.NoError(t, err)
			defer db.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			err = Migrate(ctx, db, nil)
			require.Error(t, err)
			require.Contains(t, err.Error(), "192.0.2.1")
			require.Less(t, time.Since(start), 10*time.Second)
		})
	}
}
