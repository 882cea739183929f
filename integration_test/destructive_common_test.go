//go:build linux

package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

// The destructive scenarios (S12–S14 of the reliability plan) pause, crash
// or move the clock of a database server, so each runs on a throwaway
// server of its own (internal/dbinstance), never on the shared ones.

// destructiveKinds are the server dialects the destructive scenarios run on.
var destructiveKinds = []string{testdb.Postgres, testdb.MySQL}

// destructiveTTL is the lease TTL of the destructive scenarios.
const destructiveTTL = 2 * time.Second

// setupInstance starts a throwaway server of kind, migrates its test
// database and creates the tables fencedWrite writes (test_counter,
// test_journal).
func setupInstance(t *testing.T, kind string, o dbinstance.Options) (*dbinstance.Instance, *testdb.DB) {
	t.Helper()
	began := time.Now()
	inst := dbinstance.Start(t, kind, o)
	t.Logf("%s: throwaway server at %s ready in %s", kind, inst.Addr(), time.Since(began).Round(time.Millisecond))
	db := testdb.Reopen(t, kind, inst.DSN())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := migrations.Up(ctx, db.DB, db.Dialect)
	require.NoError(t, err)
	for _, stmt := range []string{
		`CREATE TABLE test_counter (name VARCHAR(64) PRIMARY KEY, n BIGINT NOT NULL)`,
		`CREATE TABLE test_journal (name VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, token BIGINT NOT NULL, writer VARCHAR(64) NOT NULL)`,
	} {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err)
	}
	return inst, db
}

// instClient returns a client with a pool of its own on db.
func instClient(t *testing.T, db *testdb.DB, cfg sqldlm.Config) *sqldlm.Client {
	t.Helper()
	if cfg.TTL == 0 {
		cfg.TTL = destructiveTTL
	}
	return newClient(t, db, cfg)
}

// renewals records when each successful renewal of one client was sent
// (completion time minus its latency, which is how the library dates it).
type renewals struct {
	sqldlm.NopHooks
	mu   sync.Mutex
	sent []time.Time
}

func (r *renewals) LeaseRenewed(latency time.Duration) {
	at := time.Now().Add(-latency)
	r.mu.Lock()
	r.sent = append(r.sent, at)
	r.mu.Unlock()
}

// lastBefore returns the send time of the last renewal sent before t.
func (r *renewals) lastBefore(t time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var last time.Time
	for _, s := range r.sent {
		if s.Before(t) && s.After(last) {
			last = s
		}
	}
	return last
}

// firstAfter reports whether a renewal was sent after t, and when.
func (r *renewals) firstAfter(t time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range r.sent {
		if s.After(t) {
			return s, true
		}
	}
	return time.Time{}, false
}

// journalRow is one row of test_journal.
type journalRow struct {
	seq, token int64
	writer     string
}

// checkJournal checks the fencing checker of the plan for name: the journal
// rows are numbered 1..n without gap or repeat, the counter equals n (no
// lost or doubled fenced transaction), and tokens never decrease in commit
// order (a holder whose lock was taken over never wrote after its
// successor). It returns the rows by seq.
func checkJournal(t *testing.T, ctx context.Context, db *sql.DB, kind, name string) []journalRow {
	t.Helper()
	rows, err := db.QueryContext(ctx, q(kind, `SELECT seq, token, writer FROM test_journal WHERE name = ? ORDER BY seq`), name)
	require.NoError(t, err)
	defer rows.Close()
	var out []journalRow
	for rows.Next() {
		var r journalRow
		require.NoError(t, rows.Scan(&r.seq, &r.token, &r.writer))
		if len(out) > 0 {
			prev := out[len(out)-1]
			require.LessOrEqual(t, prev.token, r.token,
				"%s: journal seq %d (token %d, %s) after seq %d (token %d, %s): a write of an older holder landed after its successor's",
				name, r.seq, r.token, r.writer, prev.seq, prev.token, prev.writer)
		}
		require.EqualValues(t, len(out)+1, r.seq, "%s: journal rows numbered 1..n without gap or repeat", name)
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	var n int64
	err = db.QueryRowContext(ctx, q(kind, `SELECT n FROM test_counter WHERE name = ?`), name).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		n, err = 0, nil
	}
	require.NoError(t, err)
	require.EqualValues(t, len(out), n, "%s: the counter equals the number of journal rows", name)
	return out
}

// waitDone waits until l's Done channel closes and returns when it saw it,
// or the zero time after within.
func waitDone(l *sqldlm.Lock, within time.Duration) time.Time {
	select {
	case <-l.Done():
		return time.Now()
	case <-time.After(within):
		return time.Time{}
	}
}

// dropIdle closes the idle connections of db, which a server crash left
// dead: the next query would fail on one of them (as it would in an
// application, which retries; the checks here are not meant to).
func dropIdle(db *sql.DB) {
	db.SetMaxIdleConns(0)
	db.SetMaxIdleConns(2) // database/sql's default
}
