package bench

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
)

// mysqlFamily: the two-commit floor inserts with INSERT IGNORE (a taken
// name is no error, just no row); the advisory floor is GET_LOCK on a
// session of its own, which has no shared mode.
var mysqlFamily = family{
	createFloor: `CREATE TABLE IF NOT EXISTS sqldlm_bench_floor (name VARCHAR(255) NOT NULL PRIMARY KEY,
		owner BIGINT NOT NULL) ENGINE=InnoDB`,
	dropFloor:      `DROP TABLE IF EXISTS sqldlm_bench_floor`,
	floorAcquire:   `INSERT IGNORE INTO sqldlm_bench_floor (name, owner) VALUES (?, ?)`,
	floorRelease:   `DELETE FROM sqldlm_bench_floor WHERE name = ? AND owner = ?`,
	floorPrimitive: "INSERT IGNORE, DELETE (autocommit)",
	// InnoDB purges by itself; its statistics are refreshed here as
	// innodb_stats_auto_recalc would, eventually.
	vacuum: `ANALYZE TABLE sqldlm_leases, sqldlm_locks, sqldlm_holders, sqldlm_waiters, sqldlm_bench_floor`,
	advisory: &advisory{
		// A day's timeout: at the end of a cell the holders finish and
		// hand the lock on, so a waiter never waits that long.
		lock:      `SELECT GET_LOCK(?, 86400)`,
		unlock:    `SELECT RELEASE_LOCK(?)`,
		key:       mysqlLockKey,
		primitive: "GET_LOCK/RELEASE_LOCK",
	},
	settings: func(ctx context.Context, db *sql.DB) (string, map[string]string, error) {
		var version string
		if err := db.QueryRowContext(ctx, `SELECT VERSION()`).Scan(&version); err != nil {
			return "", nil, err
		}
		rows, err := db.QueryContext(ctx, `SHOW GLOBAL VARIABLES WHERE Variable_name IN
			('innodb_flush_log_at_trx_commit', 'sync_binlog', 'log_bin', 'innodb_flush_method', 'innodb_doublewrite',
			 'innodb_buffer_pool_size', 'innodb_log_file_size', 'max_connections', 'thread_handling',
			 'transaction_isolation', 'tx_isolation')`)
		if err != nil {
			return "", nil, err
		}
		s, err := scanSettings(rows)
		return version, s, err
	},
	serverProcs: []string{"mariadbd", "mysqld"},
}

// mysqlLockKey keeps GET_LOCK names within MySQL's 64 characters.
func mysqlLockKey(name string) any {
	if len(name) <= 64 {
		return name
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	return fmt.Sprintf("%s~%016x", name[:47], h.Sum64())
}
