package sqlite_test

import (
	"testing"

	"github.com/sqldlm/sqldlm/internal/schemadump"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// schema/ holds the live schema the migrations build (go generate writes it).
func TestSchemaMatchesMigrations(t *testing.T) { schemadump.Check(t, testdb.SQLite) }
