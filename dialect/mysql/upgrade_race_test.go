package mysql_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// upgradeRace (HA-2026-12 G6): two shared holders of a name upgrade at
// the same instant, trials times. In each, exactly one must be refused at
// once with ErrUpgradeConflict, and the other granted once the refused one
// releases. Before version 6 both could be refused: each passed the "no
// other upgrade is waiting" check, both queued, and each then saw the
// other's waiter row. It returns the number of trials in which both were
// refused. dbA and dbB may reach different Galera nodes.
func upgradeRace(t *testing.T, dbA, dbB *sql.DB, trials int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	client := func(db *sql.DB, owner string) *sqldlm.Client {
		c, err := sqldlm.New(db, sqldlm.Config{Dialect: mysql.Dialect(), Owner: owner, ReapInterval: sqldlm.ReapDisabled,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := client(dbA, "a"), client(dbB, "b")
	both := 0
	for i := range trials {
		name := fmt.Sprintf("g6/%d", i)
		la, err := a.Lock(ctx, name, sqldlm.Shared)
		require.NoError(t, err)
		lb, err := b.Lock(ctx, name, sqldlm.Shared)
		require.NoError(t, err)
		type result struct {
			l   *sqldlm.Lock
			err error
		}
		results := make(chan result, 2)
		start := make(chan struct{})
		for _, l := range []*sqldlm.Lock{la, lb} {
			go func() {
				<-start
				results <- result{l, l.Upgrade(ctx)}
			}()
		}
		close(start)
		first := <-results
		require.ErrorIs(t, first.err, sqldlm.ErrUpgradeConflict, "trial %d: the first to return is refused", i)
		// The refused one releases: the other is granted, unless it was
		// refused too.
		require.NoError(t, first.l.Release(ctx))
		second := <-results
		switch {
		case errors.Is(second.err, sqldlm.ErrUpgradeConflict):
			both++
			t.Logf("trial %d: both upgraders refused", i)
			require.NoError(t, second.l.Release(ctx))
		default:
			require.NoError(t, second.err, "trial %d", i)
			require.Equal(t, sqldlm.Exclusive, second.l.Mode())
			require.NoError(t, second.l.Release(ctx))
		}
	}
	t.Logf("%d trials: both upgraders refused in %d", trials, both)
	return both
}

// TestUpgradeRace runs upgradeRace on the shared server (standalone
// MariaDB or MySQL).
func TestUpgradeRace(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.MySQL)
	require.Zero(t, upgradeRace(t, db.DB, db.DB, 30), "trials in which both upgraders were refused")
}
