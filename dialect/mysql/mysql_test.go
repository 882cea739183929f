package mysql_test

import (
	"database/sql"
	"testing"

	"github.com/sqldlm/sqldlm/dialect/dialecttest"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

var harness = dialecttest.Harness{
	Dialect: mysql.Dialect(),
	Open: func(t testing.TB) (*sql.DB, func(testing.TB) *sql.DB) {
		db := testdb.Open(t, testdb.MySQL)
		return db.DB, func(t testing.TB) *sql.DB { return testdb.Reopen(t, db.Kind, db.DSN).DB }
	},
}

func TestConformance(t *testing.T) {
	t.Parallel()
	dialecttest.Exercise(t, harness)
}

func TestConformanceWithdraw(t *testing.T) {
	t.Parallel()
	dialecttest.ExerciseWithdraw(t, harness)
}
