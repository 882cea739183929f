//go:build linux

package integration_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/migrations"
)

// recordHandler keeps the records logged at or above Warn.
type recordHandler struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *recordHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r)
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

// G5 of the cluster report: one Galera node's failure stalls every commit
// for about evs.suspect_timeout + 1 s, and with a TTL under about twice that
// every lease in the cluster was lost. New warns, once, through the
// client's logger; a long enough TTL gets no warning.
func TestGaleraNewWarnsOfTTLShorterThanStall(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := dbinstance.StartGalera(t, 1).Nodes[0].Open(t)
	_, err := migrations.Up(ctx, db, mysql.Dialect())
	require.NoError(t, err)

	for _, tc := range []struct {
		ttl  time.Duration
		warn bool
	}{{5 * time.Second, true}, {15 * time.Second, false}} {
		h := &recordHandler{}
		c, err := sqldlm.New(db, sqldlm.Config{TTL: tc.ttl, Logger: slog.New(h)})
		require.NoError(t, err)
		require.NoError(t, c.Close())
		var warnings []string
		for _, r := range h.records {
			warnings = append(warnings, r.Message)
		}
		if !tc.warn {
			require.Empty(t, warnings, "TTL %v", tc.ttl)
			continue
		}
		require.Len(t, warnings, 1, "TTL %v", tc.ttl)
		require.True(t, strings.Contains(warnings[0], "too short for this Galera cluster") &&
			strings.Contains(warnings[0], "at least 12s"), warnings[0])
	}
}
