package schemadump

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/sqldlm/sqldlm/migrations"
)

// dumpSQLite renders sqlite_schema: each table with its indexes and
// triggers in one file, each view in its own, as the text SQLite keeps
// (the statement that created it, as later ALTERs left it).
func dumpSQLite(ctx context.Context, q *sql.DB) (string, map[string]string, error) {
	rows, err := q.QueryContext(ctx, `
		SELECT type, name, tbl_name, sql FROM sqlite_schema
		 WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\_%' ESCAPE '\' AND tbl_name <> ?
		 ORDER BY tbl_name, CASE type WHEN 'table' THEN 0 WHEN 'view' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, name`,
		migrations.VersionTable)
	if err != nil {
		return "", nil, fmt.Errorf("read sqlite_schema: %w", err)
	}
	defer rows.Close()
	objects := map[string]string{}
	for rows.Next() {
		var typ, name, table, def string
		if err := rows.Scan(&typ, &name, &table, &def); err != nil {
			return "", nil, err
		}
		// The table first, then its indexes and triggers, one after another.
		if prev, ok := objects[table]; ok {
			objects[table] = prev + "\n" + def + ";"
		} else {
			objects[table] = def + ";"
		}
	}
	return "SQLite", objects, rows.Err()
}
