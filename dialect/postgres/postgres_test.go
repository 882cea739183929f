package postgres_test

import (
	"database/sql"
	"testing"

	"github.com/sqldlm/sqldlm/dialect/dialecttest"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

func harness() dialecttest.Harness {
	return dialecttest.Harness{
		Dialect: postgres.Dialect(),
		Holds:   "sqldlm_holds",
		Open: func(t testing.TB) (*sql.DB, func(testing.TB) *sql.DB) {
			db := testdb.Open(t, testdb.Postgres)
			return db.DB, func(t testing.TB) *sql.DB { return testdb.Reopen(t, db.Kind, db.DSN).DB }
		},
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	dialecttest.Exercise(t, harness())
}

func TestConformanceWithdraw(t *testing.T) {
	t.Parallel()
	dialecttest.ExerciseWithdraw(t, harness())
}
