package postgres_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

var identifierRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// identifierSeeds are identifiers to try: valid ones at the limits, and
// injections, quotes, spaces, Unicode and overlong ones to be refused.
var identifierSeeds = []string{
	"locks", "Locks", "LOCKS", "_", "a1", "select", "user", strings.Repeat("x", 63), strings.Repeat("x", 64),
	strings.Repeat("x", 62) + "y", strings.Repeat("x", 62) + "Y", "", "1abc", "a b", "a;b", `a"b`, "a`b", "a'b",
	"locks; DROP TABLE sqldlm_locks; --", `"locks"`, "é", "a\x00b", "a-b", "a.b", "a$", "\xff",
}

// FuzzQuoteIdentifier: QuoteIdentifier accepts exactly ^[A-Za-z_][A-Za-z0-9_]{0,62}$,
// quotes it as pgx does, and the quoted name creates a table PostgreSQL
// stores under exactly that name: no truncation (NAMEDATALEN), no case
// folding, so two distinct valid identifiers never name the same table.
func FuzzQuoteIdentifier(f *testing.F) {
	for _, a := range identifierSeeds {
		f.Add(a, strings.ToUpper(a))
	}
	db := testdb.Open(f, testdb.Postgres)
	d := postgres.Dialect().(dialect.Testable)
	f.Fuzz(func(t *testing.T, a, b string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var created []string
		for _, name := range []string{a, b} {
			q, err := d.QuoteIdentifier(name)
			if identifierRE.MatchString(name) != (err == nil) {
				t.Fatalf("QuoteIdentifier(%q) = %q, %v", name, q, err)
			}
			if err != nil {
				if !strings.Contains(err.Error(), "invalid identifier") {
					t.Fatalf("QuoteIdentifier(%q): unclear error %v", name, err)
				}
				continue
			}
			if want := (pgx.Identifier{name}).Sanitize(); q != want {
				t.Fatalf("QuoteIdentifier(%q) = %s, pgx quotes it %s", name, q, want)
			}
			if name == b && a == b && len(created) == 1 {
				continue // a == b
			}
			if _, err := db.ExecContext(ctx, `CREATE TABLE `+q+` (x int)`); err != nil {
				t.Fatalf("create table %s (other name %q): %v", q, a, err)
			}
			created = append(created, q)
			var n int
			if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_class WHERE relname = $1 AND relnamespace = current_schema()::regnamespace`, name).Scan(&n); err != nil || n != 1 {
				t.Fatalf("table %s: %d tables named %q exactly (%v)", q, n, name, err)
			}
		}
		for _, q := range created {
			if _, err := db.ExecContext(ctx, `DROP TABLE `+q); err != nil {
				t.Fatal(err)
			}
		}
	})
}
