package migrations_test

import (
	"context"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

// TestUpRepairsEmptyVersionTable: a first migration interrupted between
// creating the version table and recording version 0 (HA-2026-12 G1 left
// databases so) is repaired by the next Up instead of failing with "missing
// zero version migration" for ever.
func TestUpRepairsEmptyVersionTable(t *testing.T) {
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			db := testdb.Open(t, kind)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// goose's Status creates the version table with its version 0 row.
			if _, err := migrations.Status(ctx, db.DB, db.Dialect); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, "DELETE FROM "+migrations.VersionTable); err != nil {
				t.Fatal(err)
			}
			if _, err := migrations.Up(ctx, db.DB, db.Dialect); err != nil {
				t.Fatalf("Up on an empty version table: %v", err)
			}
			latest, err := migrations.Latest(db.Dialect)
			if err != nil {
				t.Fatal(err)
			}
			if v, err := migrations.Current(ctx, db.DB, db.Dialect); err != nil || v != latest {
				t.Fatalf("after Up: version %d (%v), want %d", v, err, latest)
			}
		})
	}
}
