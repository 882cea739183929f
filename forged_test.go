package sqldlm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// signalHandler is a slog handler that signals on ch each record whose
// message contains substr (and drops everything else).
type signalHandler struct {
	substr string
	ch     chan struct{}
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.substr) {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *signalHandler) WithGroup(string) slog.Handler      { return h }

// Defect 9 (trust boundary, PostgreSQL): a role that may only read
// sqldlm's tables and views (a monitoring role), and NOTIFY as every role
// may by default, reads a real waiter's lease and request from
// sqldlm_waiters and sends a forged handover notification with token
// 999999. The waiter does not take it: its Lock goes on waiting while the
// real holder holds the name, and is granted a real token once it leaves.
func TestForgedGrantNotificationIsIgnored(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	b := &lockBundle{db: db, kind: testdb.Postgres}
	ctx := testCtx(t)

	var schema string
	require.NoError(t, db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema))
	suffix := make([]byte, 5)
	_, _ = rand.Read(suffix)
	role := "sqldlm_monitor_" + hex.EncodeToString(suffix)
	qRole, err := db.Dialect.QuoteIdentifier(role)
	require.NoError(t, err)
	qSchema, err := db.Dialect.QuoteIdentifier(schema)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `CREATE ROLE `+qRole+` LOGIN`)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, s := range []string{`DROP OWNED BY ` + qRole, `DROP ROLE ` + qRole} {
			if _, err := db.ExecContext(ctx, s); err != nil {
				t.Errorf("cleanup %s: %v", s, err)
			}
		}
	})
	for _, s := range []string{
		`GRANT USAGE ON SCHEMA ` + qSchema + ` TO ` + qRole,
		`GRANT SELECT ON ALL TABLES IN SCHEMA ` + qSchema + ` TO ` + qRole, // tables and views
	} {
		_, err := db.ExecContext(ctx, s)
		require.NoError(t, err, s)
	}
	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	u.User = url.User(role)
	monitor := testdb.Reopen(t, testdb.Postgres, u.String())
	_, err = monitor.ExecContext(ctx, `DELETE FROM sqldlm_holders`)
	require.ErrorContains(t, err, "SQLSTATE 42501", "the role may only read")

	holder := b.client(t, Config{ReapInterval: ReapDisabled})
	h, err := holder.Lock(ctx, "forged/n", Exclusive)
	require.NoError(t, err)
	ignored := &signalHandler{substr: "ignored a notification", ch: make(chan struct{}, 1)}
	waiter := b.client(t, Config{ReapInterval: ReapDisabled, Logger: slog.New(ignored)})
	require.Eventually(t, waiter.notified, 10*time.Second, 5*time.Millisecond, "the waiter listens")

	type result struct {
		l   *Lock
		err error
	}
	got := make(chan result, 1)
	go func() {
		l, err := waiter.Lock(ctx, "forged/n", Exclusive)
		got <- result{l, err}
	}()
	var lease, req int64
	require.Eventually(t, func() bool {
		return monitor.QueryRowContext(ctx, `SELECT lease_id, request_id FROM sqldlm_waiters WHERE name = 'forged/n'`).Scan(&lease, &req) == nil
	}, 10*time.Second, 5*time.Millisecond, "the monitoring role sees the waiter")
	_, err = monitor.ExecContext(ctx, `SELECT pg_notify(sqldlm_channel(), $1)`, fmt.Sprintf("g %d %d 999999 forged/n", lease, req))
	require.NoError(t, err)

	select {
	case r := <-got:
		if r.err == nil {
			t.Fatalf("the waiter took the forged grant: token %d while the holder holds token %d", r.l.Token(), h.Token())
		}
		t.Fatalf("the waiter's Lock failed: %v", r.err)
	case <-ignored.ch:
	case <-ctx.Done():
		t.Fatal("the forged notification was neither taken nor ignored")
	}
	require.NoError(t, h.Err())
	require.NoError(t, h.Release(ctx))
	r := <-got
	require.NoError(t, r.err)
	require.NotEqual(t, int64(999999), r.l.Token())
	require.Greater(t, r.l.Token(), h.Token())
	requireHeldAsReported(t, b, r.l)
	require.NoError(t, r.l.Release(ctx))
}
