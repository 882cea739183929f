// Package linkcheck_test checks that a program importing sqldlm and one
// dialect links only that dialect's driver: the root package finds dialects
// by registration (dialect.Register), not by importing them.
package linkcheck_test

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestLinksOnlyItsDialectsDriver(t *testing.T) {
	for _, tc := range []struct {
		program   string   // a folder beside this file: a main package
		wanted    []string // modules it must link (checks that the listing works)
		forbidden []string // modules it must not link
	}{
		{
			program:   "postgres",
			wanted:    []string{"github.com/sqldlm/sqldlm", "github.com/jackc/pgx/v5"},
			forbidden: []string{"github.com/go-sql-driver/mysql", "filippo.io/edwards25519", "modernc.org/sqlite", "modernc.org/libc"},
		},
		{
			program:   "mysql",
			wanted:    []string{"github.com/sqldlm/sqldlm", "github.com/go-sql-driver/mysql"},
			forbidden: []string{"github.com/jackc/pgx/v5", "modernc.org/sqlite", "modernc.org/libc"},
		},
		{
			program:   "sqlite",
			wanted:    []string{"github.com/sqldlm/sqldlm", "modernc.org/sqlite"},
			forbidden: []string{"github.com/jackc/pgx/v5", "github.com/go-sql-driver/mysql", "filippo.io/edwards25519"},
		},
	} {
		t.Run(tc.program, func(t *testing.T) {
			t.Parallel()
			modules := linkedModules(t, "./"+tc.program)
			for _, m := range tc.wanted {
				if !slices.Contains(modules, m) {
					t.Errorf("%s does not link %s; it links %v", tc.program, m, modules)
				}
			}
			for _, m := range tc.forbidden {
				if slices.Contains(modules, m) {
					t.Errorf("%s links %s, a driver (or its dependency) it does not use; it links %v", tc.program, m, modules)
				}
			}
		})
	}
}

// A program that opens a database with a known driver but does not import
// its dialect gets an error naming the import to add.
func TestUnimportedDialectNamesTheImport(t *testing.T) {
	t.Parallel()
	modules := linkedModules(t, "./nodialect")
	for _, m := range []string{"github.com/go-sql-driver/mysql", "modernc.org/sqlite"} {
		if slices.Contains(modules, m) {
			t.Errorf("nodialect links %s; it links %v", m, modules)
		}
	}
	out, err := exec.Command(goTool(t), "run", "./nodialect").CombinedOutput()
	if err != nil {
		t.Fatalf("go run ./nodialect: %v\n%s", err, out)
	}
	want := `sqldlm: no dialect registered for database driver github.com/jackc/pgx/v5/stdlib.Driver: ` +
		`import _ "github.com/sqldlm/sqldlm/dialect/postgres" in the program, or set Config.Dialect to postgres.Dialect()`
	if !strings.Contains(string(out), want) {
		t.Errorf("go run ./nodialect printed\n%s\nwant it to contain\n%s", out, want)
	}
}

// linkedModules lists the modules that provide the packages pkg builds
// from, as `go list -deps` reports them.
func linkedModules(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command(goTool(t), "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", pkg).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr)
	}
	var modules []string
	for _, line := range strings.Fields(string(out)) {
		if !slices.Contains(modules, line) {
			modules = append(modules, line)
		}
	}
	slices.Sort(modules)
	return modules
}

// goTool is the go command that runs this test: the one on PATH, else the
// one beside the standard library this test was built with.
func goTool(t *testing.T) string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := exec.LookPath(p); err != nil {
		t.Fatalf("no go command on PATH nor at %s", p)
	}
	return p
}
