//go:build linux

package dbinstance_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/dsn"
)

// A pair replicates, a synchronous one reports its standby synchronous, and
// after the primary's crash the promoted standby takes writes through the
// pair's multi-host DSN, with everything committed before the crash.
func TestPGPair(t *testing.T) {
	t.Parallel()
	for _, sync := range []bool{false, true} {
		name := map[bool]string{false: "async", true: "sync"}[sync]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			p := dbinstance.StartPGPair(t, dbinstance.PGPairOptions{Sync: sync})

			db, _, err := dsn.Open(ctx, p.DSN())
			require.NoError(t, err)
			defer db.Close()
			_, err = db.ExecContext(ctx, `CREATE TABLE t (v int); INSERT INTO t VALUES (1)`)
			require.NoError(t, err)
			var state string
			require.NoError(t, p.Primary.Open(t).QueryRowContext(ctx, `SELECT sync_state FROM pg_stat_replication`).Scan(&state))
			require.Equal(t, map[bool]string{false: "async", true: "sync"}[sync], state)

			standby := p.Standby.Open(t)
			require.Eventually(t, func() bool {
				var n int
				return standby.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n) == nil && n == 1
			}, 30*time.Second, 10*time.Millisecond, "the standby never received the row")

			p.Primary.Crash()
			require.NoError(t, p.Promote())
			require.Eventually(t, func() bool {
				_, err := db.ExecContext(ctx, `INSERT INTO t VALUES (2)`)
				return err == nil
			}, 30*time.Second, 20*time.Millisecond, "no write after the promotion")
			var n int
			require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM t`).Scan(&n))
			require.Equal(t, 2, n)
		})
	}
}
