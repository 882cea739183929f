package bench

import (
	"context"
	"database/sql"
)

// sqliteFamily: SQLite has no server and no session lock, so only the
// two-commit floor exists: INSERT OR IGNORE and DELETE, on one connection
// (SQLite has one writer; more connections would only sleep in the busy
// handler).
var sqliteFamily = family{
	createFloor:    `CREATE TABLE IF NOT EXISTS sqldlm_bench_floor (name TEXT PRIMARY KEY, owner INTEGER NOT NULL)`,
	dropFloor:      `DROP TABLE IF EXISTS sqldlm_bench_floor`,
	floorAcquire:   `INSERT OR IGNORE INTO sqldlm_bench_floor (name, owner) VALUES (?, ?)`,
	floorRelease:   `DELETE FROM sqldlm_bench_floor WHERE name = ? AND owner = ?`,
	floorPrimitive: "INSERT OR IGNORE, DELETE (autocommit, one connection)",
	floorOneConn:   true,
	settings: func(ctx context.Context, db *sql.DB) (string, map[string]string, error) {
		// Pragmas are per connection: read them all on one.
		conn, err := db.Conn(ctx)
		if err != nil {
			return "", nil, err
		}
		defer conn.Close()
		var version string
		if err := conn.QueryRowContext(ctx, `SELECT 'SQLite ' || sqlite_version()`).Scan(&version); err != nil {
			return "", nil, err
		}
		out := map[string]string{}
		for _, p := range []string{"journal_mode", "synchronous", "busy_timeout"} {
			var v string
			if err := conn.QueryRowContext(ctx, `PRAGMA `+p).Scan(&v); err != nil {
				return "", nil, err
			}
			out[p] = v
		}
		return version, out, nil
	},
}
