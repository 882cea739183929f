package mysql_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

var identifierRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

var identifierSeeds = []string{
	"locks", "Locks", "LOCKS", "_", "a1", "select", "user", strings.Repeat("x", 63), strings.Repeat("x", 64),
	strings.Repeat("x", 62) + "y", strings.Repeat("x", 62) + "Y", "", "1abc", "a b", "a;b", `a"b`, "a`b", "a'b",
	"locks; DROP TABLE sqldlm_locks; --", "`locks`", "é", "a\x00b", "a-b", "a.b", "a$", "\xff",
}

// FuzzQuoteIdentifier: QuoteIdentifier accepts exactly ^[A-Za-z_][A-Za-z0-9_]{0,62}$,
// quotes it in backticks, and the quoted name creates a table the server
// lists under exactly that name, so two distinct valid identifiers never
// name the same table (on a server with lower_case_table_names=0, the
// default on Linux; the test skips on others).
func FuzzQuoteIdentifier(f *testing.F) {
	for _, a := range identifierSeeds {
		f.Add(a, strings.ToUpper(a))
	}
	db := testdb.Open(f, testdb.MySQL)
	var lower int
	if err := db.QueryRowContext(context.Background(), `SELECT @@lower_case_table_names`).Scan(&lower); err != nil {
		f.Fatal(err)
	}
	d := mysql.Dialect().(dialect.Testable)
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
			if q != "`"+name+"`" {
				t.Fatalf("QuoteIdentifier(%q) = %s", name, q)
			}
			if lower != 0 || (name == b && a == b && len(created) == 1) {
				continue
			}
			if _, err := db.ExecContext(ctx, `CREATE TABLE `+q+` (x int)`); err != nil {
				t.Fatalf("create table %s (other name %q): %v", q, a, err)
			}
			created = append(created, q)
			var n int
			if err := db.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND CAST(table_name AS BINARY) = CAST(? AS BINARY)`, name).Scan(&n); err != nil || n != 1 {
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
