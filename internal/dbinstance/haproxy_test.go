//go:build linux

package dbinstance

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/dsn"
)

// Through the proxy, connections reach the first server; once it dies they
// reach the backup, within a few health checks.
func TestHAProxyFailsOverToBackup(t *testing.T) {
	t.Parallel()
	a := Start(t, "mysql", Options{})
	b := Start(t, "mysql", Options{})
	h := StartHAProxy(t, []string{a.Addr(), b.Addr()}, HAProxyOptions{CheckInterval: 200 * time.Millisecond})
	through := strings.Replace(a.DSN(), a.Addr(), h.Addr(), 1)
	portVia := func(ctx context.Context) (int, error) {
		db, _, err := dsn.Open(ctx, through)
		if err != nil {
			return 0, err
		}
		defer db.Close()
		var port int
		return port, db.QueryRowContext(ctx, `SELECT @@port`).Scan(&port)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	port, err := portVia(ctx)
	require.NoError(t, err)
	require.Equal(t, a.port, port, "the active server takes the connections")

	a.Crash()
	killed := time.Now()
	require.Eventually(t, func() bool {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		p, err := portVia(pctx)
		return err == nil && p == b.port
	}, 30*time.Second, 50*time.Millisecond, "the backup takes over")
	t.Logf("connections reach the backup %s after the active server's kill -9", time.Since(killed).Round(time.Millisecond))
}
