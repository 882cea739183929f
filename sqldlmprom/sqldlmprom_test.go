package sqldlmprom_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/sqldlmprom"
)

func TestMetricsCountLocks(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.OpenMigrated(t, kind)
			m := sqldlmprom.New(sqldlmprom.Options{ConstLabels: prometheus.Labels{"service": "test"}})
			reg := prometheus.NewPedanticRegistry()
			require.NoError(t, reg.Register(m))
			c, err := sqldlm.New(db.DB, sqldlm.Config{Hooks: m, TTL: time.Second})
			require.NoError(t, err)
			defer c.Close()
			ctx := context.Background()

			for range 3 {
				l, err := c.Lock(ctx, "node/1", sqldlm.Exclusive)
				require.NoError(t, err)
				require.NoError(t, l.Release(ctx))
			}
			held, err := c.Lock(ctx, "node/2", sqldlm.Shared)
			require.NoError(t, err)
			_, err = c.TryLock(ctx, "node/2", sqldlm.Exclusive)
			require.ErrorIs(t, err, sqldlm.ErrLocked)
			// A Lock that gives up on its ctx while the name is held is a
			// give-up, although its error also matches ErrLocked.
			wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			_, err = c.Lock(wctx, "node/2", sqldlm.Exclusive)
			cancel()
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.Equal(t, 1.0, testutil.ToFloat64(m.Collector("acquire_failures_total", "exclusive", "canceled")))

			require.Equal(t, 3.0, testutil.ToFloat64(m.Collector("grants_total", "exclusive")))
			require.Equal(t, 1.0, testutil.ToFloat64(m.Collector("grants_total", "shared")))
			require.Equal(t, 3.0, testutil.ToFloat64(m.Collector("releases_total", "exclusive")))
			require.Equal(t, 1.0, testutil.ToFloat64(m.Collector("locks_held", "shared")))
			require.Equal(t, 1.0, testutil.ToFloat64(m.Collector("acquire_failures_total", "exclusive", "locked")))
			require.Eventually(t, func() bool {
				n, err := testutil.GatherAndCount(reg, "sqldlm_lease_renewal_seconds")
				return err == nil && n == 1 && histogramCount(t, reg, "sqldlm_lease_renewal_seconds") > 0
			}, 5*time.Second, 20*time.Millisecond, "the heartbeat's renewals are observed")
			require.NoError(t, held.Release(ctx))
			require.Equal(t, 0.0, testutil.ToFloat64(m.Collector("locks_held", "shared")))
			problems, err := testutil.GatherAndLint(reg)
			require.NoError(t, err)
			require.Empty(t, problems)
		})
	}
}

func histogramCount(t *testing.T, reg *prometheus.Registry, name string) uint64 {
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func TestMetricsCountMembershipsAndElections(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, "sqlite")
	m := sqldlmprom.New(sqldlmprom.Options{})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(m))
	c, err := sqldlm.New(db.DB, sqldlm.Config{Hooks: m, TTL: time.Second})
	require.NoError(t, err)
	ctx := context.Background()
	a, err := c.Join(ctx, "g", "a")
	require.NoError(t, err)
	_, err = c.Join(ctx, "g", "b")
	require.NoError(t, err)
	require.Equal(t, 2.0, testutil.ToFloat64(m.Collector("member_joins_total")))
	require.Equal(t, 2.0, testutil.ToFloat64(m.Collector("memberships")))
	require.NoError(t, a.Leave(ctx))
	require.Equal(t, 1.0, testutil.ToFloat64(m.Collector("member_leaves_total", "left")))
	ld, err := c.Campaign(ctx, "scheduler", "")
	require.NoError(t, err)
	require.Equal(t, 1.0, testutil.ToFloat64(m.Collector("elections_won_total")))
	require.NoError(t, ld.Resign(ctx))
	require.NoError(t, c.Close())
	require.Equal(t, 1.0, testutil.ToFloat64(m.Collector("member_leaves_total", "closed")))
	require.Equal(t, 0.0, testutil.ToFloat64(m.Collector("memberships")))
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}
