package bench

import (
	"context"
	"database/sql"
	"hash/fnv"
)

// postgresFamily: the two-commit floor inserts with ON CONFLICT DO NOTHING
// (a taken name is no error, just no row); the advisory floor is
// pg_advisory_lock (or _shared) on a session of its own.
var postgresFamily = family{
	createFloor:    `CREATE TABLE IF NOT EXISTS sqldlm_bench_floor (name text PRIMARY KEY, owner bigint NOT NULL)`,
	dropFloor:      `DROP TABLE IF EXISTS sqldlm_bench_floor`,
	floorAcquire:   `INSERT INTO sqldlm_bench_floor (name, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
	floorRelease:   `DELETE FROM sqldlm_bench_floor WHERE name = $1 AND owner = $2`,
	floorPrimitive: "INSERT ... ON CONFLICT DO NOTHING, DELETE (autocommit)",
	vacuum: `VACUUM (ANALYZE) sqldlm_leases, sqldlm_locks, sqldlm_holders, sqldlm_waiters, sqldlm_pending,
		sqldlm_bench_floor`,
	advisory: &advisory{
		lock:            `SELECT 1 FROM pg_advisory_lock($1)`,
		unlock:          `SELECT pg_advisory_unlock($1)`,
		lockShared:      `SELECT 1 FROM pg_advisory_lock_shared($1)`,
		unlockShared:    `SELECT pg_advisory_unlock_shared($1)`,
		key:             advisoryKey,
		primitive:       "pg_advisory_lock/pg_advisory_unlock",
		primitiveShared: "pg_advisory_lock_shared/pg_advisory_unlock_shared",
	},
	settings: func(ctx context.Context, db *sql.DB) (string, map[string]string, error) {
		var version string
		if err := db.QueryRowContext(ctx, `SELECT version()`).Scan(&version); err != nil {
			return "", nil, err
		}
		rows, err := db.QueryContext(ctx, `SELECT name, setting || COALESCE(unit, '') FROM pg_settings
			WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes', 'commit_delay',
			               'shared_buffers', 'max_connections', 'default_transaction_isolation', 'wal_level',
			               'autovacuum')`)
		if err != nil {
			return "", nil, err
		}
		s, err := scanSettings(rows)
		return version, s, err
	},
	serverProcs:   []string{"postgres", "postmaster"},
	backendTitles: true,
}

// advisoryKey maps a lock name onto pg_advisory_lock's bigint key space.
func advisoryKey(name string) any {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64())
}

// scanSettings reads (name, value) rows.
func scanSettings(rows *sql.Rows) (map[string]string, error) {
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, value string
		if err := rows.Scan(&name, &value); err != nil {
			return nil, err
		}
		out[name] = value
	}
	return out, rows.Err()
}
