package sqldlm

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// syncBuffer is a bytes.Buffer safe for the client's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) records(t *testing.T) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if line == "" {
			continue
		}
		var r map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &r))
		out = append(out, r)
	}
	return out
}

// At info level the client logs only what an operator acts on (here a lost
// lease), with the fixed keys; grants are debug records.
func TestLogging(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	var buf syncBuffer
	f := &faultyDialect{Dialect: db.Dialect}
	c, err := New(db.DB, Config{Dialect: f, TTL: time.Second, Owner: "logger-test",
		Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	require.NoError(t, err)
	defer c.Close()
	ctx := testCtx(t)
	l, err := c.Lock(ctx, "node/5", Exclusive)
	require.NoError(t, err)
	require.Empty(t, buf.records(t), "a grant is not an info record")

	f.failRenew.Store(true)
	<-l.Done()
	// Done closes before the record is written (a slow logger must not
	// delay it), so wait for the record.
	var recs []map[string]any
	require.Eventually(t, func() bool { recs = buf.records(t); return len(recs) > 0 }, 5*time.Second, time.Millisecond)
	require.Len(t, recs, 1)
	require.Equal(t, "INFO", recs[0]["level"])
	require.Equal(t, "sqldlm: lease lost", recs[0]["msg"])
	require.Equal(t, "logger-test", recs[0]["owner"])
	require.NotNil(t, recs[0]["lease_id"])

	var debug syncBuffer
	d, err := New(db.DB, Config{Owner: "debug-test",
		Logger: slog.New(slog.NewJSONHandler(&debug, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	require.NoError(t, err)
	defer d.Close()
	g, err := d.Lock(ctx, "node/6", Shared)
	require.NoError(t, err)
	var granted map[string]any
	for _, r := range debug.records(t) {
		if r["msg"] == "sqldlm: lock granted" {
			granted = r
		}
	}
	require.NotNil(t, granted)
	for _, key := range []string{"lock_name", "owner", "lease_id", "token", "mode", "waited"} {
		require.Contains(t, granted, key)
	}
	require.Equal(t, "node/6", granted["lock_name"])
	require.EqualValues(t, g.Token(), granted["token"])
}

// countingHooks counts takeovers.
type countingHooks struct {
	NopHooks
	mu        sync.Mutex
	takeovers int
}

func (h *countingHooks) TookOver(string, Mode, int) {
	h.mu.Lock()
	h.takeovers++
	h.mu.Unlock()
}

// A grant that takes a lock over from a dead holder is logged at info with
// the previous holder, and reported to the hooks; a clean handover is not.
func TestTakeoverIsReported(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		dead, f := b.faulty(t, Config{TTL: time.Second, Owner: "dying-engine", ReapInterval: ReapDisabled})
		var buf syncBuffer
		hooks := &countingHooks{}
		c := b.client(t, Config{Owner: "next-engine", Hooks: hooks, ReapInterval: ReapDisabled,
			Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))})

		clean, err := dead.Lock(ctx, "stack/1", Exclusive)
		require.NoError(t, err)
		require.NoError(t, clean.Release(ctx))
		l, err := c.Lock(ctx, "stack/1", Exclusive)
		require.NoError(t, err)
		require.Nil(t, l.Takeover(), "a cleanly released name has no takeover context")
		require.NoError(t, l.Release(ctx))
		require.Zero(t, hooks.takeovers, "a clean handover is not a takeover")

		held, err := dead.Lock(ctx, "stack/1", Exclusive, WithPayload("update stack 1, step 2 of 4"))
		require.NoError(t, err)
		// The holder is cut off, as if it crashed: it neither renews nor
		// cleans up, so its lease dies with the hold in place.
		f.failRenew.Store(true)
		f.failRelease.Store(true)
		f.failDelete.Store(true)
		took, err := c.Lock(ctx, "stack/1", Exclusive)
		require.NoError(t, err)
		require.Equal(t, 1, hooks.takeovers)
		tk := took.Takeover()
		require.NotNil(t, tk, "the new handle carries the takeover context")
		require.Equal(t, "dying-engine", tk.Owner)
		require.Equal(t, held.Token(), tk.Token)
		require.Equal(t, Exclusive, tk.Mode)
		require.False(t, tk.Broken)
		require.Equal(t, "update stack 1, step 2 of 4", tk.Payload, "with the dead holder's payload")
		require.WithinDuration(t, time.Now(), tk.ExpiredAt, time.Minute)
		var rec map[string]any
		for _, r := range buf.records(t) {
			if r["msg"] == "sqldlm: took over a lock from a dead holder" {
				rec = r
			}
		}
		require.NotNil(t, rec, "the takeover is an info record")
		require.Equal(t, "dying-engine", rec["previous_owner"])
		require.EqualValues(t, held.Token(), rec["previous_token"])
		require.Equal(t, "stack/1", rec["lock_name"])
	})
}
