package schemadump

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Dir is the folder of the live schema files, relative to a dialect's
// package (the working directory of its tests and of go generate).
const Dir = "schema"

// update is the test flag with which [Check] writes the files instead: a
// dialect's go:generate line runs its test with -update-schema. (A flag of
// this test-only package, so that each dialect's test is one call.)
var update = flag.Bool("update-schema", false, "rewrite schema/ from a freshly migrated database (what go generate runs)")

// Check migrates a fresh database of kind up, dumps it and fails t on any
// difference from the files in [Dir], naming each file and how to
// regenerate them. With -update-schema it rewrites [Dir] from the dump
// instead (that is what `go generate ./dialect/<kind>` runs), and a missing
// server fails rather than skips.
//
// The files hold what one server family prints (pg_get_viewdef's layout
// changes between PostgreSQL majors, SHOW CREATE between MySQL and MariaDB):
// against another family the comparison is skipped, with a line saying so.
func Check(t *testing.T, kind string) {
	if *update {
		t.Setenv("SQLDLM_TEST_REQUIRE", kind)
	} else {
		t.Parallel()
	}
	db := testdb.OpenMigrated(t, kind)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Dump(ctx, db.DB, db.Dialect)
	if err != nil {
		t.Fatalf("dump the migrated %s schema: %v", kind, err)
	}
	if *update {
		if err := s.Write(Dir); err != nil {
			t.Fatalf("write %s: %v", Dir, err)
		}
		t.Logf("wrote %d files to %s/ from %s at schema version %d", len(s.Files), Dir, s.Server, s.Version)
		return
	}
	if was := ServerOf(Dir); was != "" && was != s.Server {
		t.Skipf("%s/ was dumped from %s and this server is %s: their catalogues print differently, so not compared", Dir, was, s.Server)
	}
	if diff := s.Diff(Dir); len(diff) > 0 {
		t.Errorf("the live schema files disagree with a database migrated to version %d:\n  %s\n"+
			"The files are generated: after writing a migration, run `go generate ./dialect/%s` "+
			"(with %s) and commit %s/.",
			s.Version, strings.Join(diff, "\n  "), kind, envHint[kind], Dir)
	}
}

var envHint = map[string]string{
	testdb.Postgres: "SQLDLM_TEST_POSTGRES_DSN set to a PostgreSQL server",
	testdb.MySQL:    "SQLDLM_TEST_MYSQL_DSN set to a MariaDB/MySQL server",
	testdb.SQLite:   "nothing else needed",
}
