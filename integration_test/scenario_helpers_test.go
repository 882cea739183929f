package integration_test

import (
	"context"
	"database/sql"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// The fault scenarios of the reliability plan (§7), mapped to their tests:
//
//	S1  baseline contention, journal checker ........ TestS1BaselineContention
//	S2  holder paused longer than the TTL ........... TestS2PausedHolder (TestPausedHolderIsFenced is its short form)
//	S3  holder paused shorter than the window ...... TestS3ShortPauseNoFalseLoss
//	S4  pause inside a fenced transaction .......... TestPausedInsideFencedTransaction (process_test.go)
//	S5  slow renewal that succeeds late ............ TestS5SlowRenewal
//	S6  healable partition of the holder ........... TestNetworkCutHolderLearnsFirst (network_test.go)
//	S7  waiter whose own lease dies while waiting .. TestS7WaiterLeaseDies
//	S8  holder crash, with and without the reaper .. TestS8HolderCrash (TestKilledHolderFreesLock: without, with takeover details)
//	S9  server kills sessions ...................... TestS9ServerKillsSessions (d: TestListenerLossFallsBackToPolling)
//	S10 indeterminate grant commit ................. TestS10IndeterminateGrant (and TestIndeterminateGrant in the root package)
//	S11 cancellation storm ......................... TestS11CancellationStorm
//	S19 reaper races and GC ........................ TestS19ReaperRaces
//	S20 shared/exclusive/upgrade under faults ...... TestS20UpgradeUnderFaults
//	S21 release and resource pressure .............. TestS21ReleaseWhilePaused, TestS21PoolExhausted, TestS21ManyLocksOneRenewal

// checkJournals asserts the journal checker of the plan (checkJournal) for
// every name in the test tables. acked, if not negative, is the number of
// fenced transactions the writers saw commit: with no unknown outcomes it
// equals the number of rows. It returns the number of rows.
func checkJournals(t *testing.T, db *testdb.DB, acked int) int {
	t.Helper()
	ctx := context.Background()
	rows, err := db.QueryContext(ctx, `SELECT name FROM test_counter UNION SELECT name FROM test_journal`)
	require.NoError(t, err)
	var names []string
	for rows.Next() {
		var name string
		require.NoError(t, rows.Scan(&name))
		names = append(names, name)
	}
	require.NoError(t, rows.Err())
	rows.Close()
	total := 0
	for _, name := range names {
		total += len(checkJournal(t, ctx, db.DB, db.Kind, name))
	}
	if acked >= 0 {
		require.Equal(t, acked, total, "every acknowledged fenced transaction, and nothing else, is in the journal")
	}
	return total
}

// withParam returns dsn with a query parameter set.
func withParam(t *testing.T, dsn, key, value string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	require.NoError(t, err)
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// hookRecorder records lease and lock events for the scenarios.
type hookRecorder struct {
	sqldlm.NopHooks
	mu       sync.Mutex
	renewals []time.Time // when each renewal succeeded
	lost     []time.Time // when a lease was declared lost
	renewed  chan struct{}
}

func newHookRecorder() *hookRecorder { return &hookRecorder{renewed: make(chan struct{}, 1)} }

func (h *hookRecorder) LeaseRenewed(time.Duration) {
	h.mu.Lock()
	h.renewals = append(h.renewals, time.Now())
	h.mu.Unlock()
	select {
	case h.renewed <- struct{}{}:
	default:
	}
}

func (h *hookRecorder) LeaseLost(int) {
	h.mu.Lock()
	h.lost = append(h.lost, time.Now())
	h.mu.Unlock()
}

func (h *hookRecorder) renewalsSince(t0 time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.renewals {
		if r.After(t0) {
			n++
		}
	}
	return n
}

func (h *hookRecorder) lossCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.lost)
}

// waitRenewal waits for the next successful renewal.
func (h *hookRecorder) waitRenewal(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case <-h.renewed:
	default:
	}
	select {
	case <-h.renewed:
	case <-time.After(within):
		t.Fatalf("no renewal within %s", within)
	}
}

// lockResult is what a Lock call returned.
type lockResult struct {
	l   *sqldlm.Lock
	err error
}

// lockAsync calls c.Lock in a goroutine; its result arrives on the channel.
func lockAsync(ctx context.Context, c *sqldlm.Client, name string, mode sqldlm.Mode) <-chan lockResult {
	got := make(chan lockResult, 1)
	go func() {
		l, err := c.Lock(ctx, name, mode)
		got <- lockResult{l, err}
	}()
	return got
}

// count runs a COUNT query with ? placeholders.
func count(t *testing.T, db *testdb.DB, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRowContext(context.Background(), q(db.Kind, query), args...).Scan(&n))
	return n
}

// skipShort skips a long scenario under -short.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("long fault scenario: skipped with -short")
	}
}

// isFree reports whether name can be taken at once by c (and gives it back).
func isFree(ctx context.Context, t *testing.T, c *sqldlm.Client, name string) bool {
	t.Helper()
	l, err := c.TryLock(ctx, name, sqldlm.Exclusive)
	if err != nil {
		require.ErrorIs(t, err, sqldlm.ErrLocked)
		return false
	}
	require.NoError(t, l.Release(ctx))
	return true
}

var _ = sql.ErrNoRows
