package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

func TestBackendDatabase(t *testing.T) {
	t.Parallel()
	tests := []struct {
		title  string
		db     string
		client bool
	}{
		{"postgres: 15/main: postgres bench 127.0.0.1(40084) idle in transaction\x00\x00", "bench", true},
		{"postgres: app test [local] idle", "test", true},
		{"postgres: 15/main: checkpointer", "", false},
		{"postgres: walwriter   ", "", false},
		{"postgres: autovacuum worker bench", "", false},
		{"/usr/lib/postgresql/15/bin/postgres\x00-D\x00/var/lib/postgresql/15/main", "", false},
	}
	for _, tt := range tests {
		db, ok := backendDatabase(tt.title)
		require.Equal(t, tt.client, ok, tt.title)
		require.Equal(t, tt.db, db, tt.title)
	}
}

func TestHandoverTracker(t *testing.T) {
	t.Parallel()
	base := time.Now()
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	h := &handoverTracker{from: base, end: at(1000)}
	h.granted(at(1), at(2))   // first grant: the lock was free
	h.released(at(10))        //
	h.granted(at(3), at(12))  // asked at 3, while held: a handover of 2ms
	h.released(at(13))        //
	h.granted(at(20), at(21)) // asked after the release: no handover
	h.granted(at(20), at(30)) // waited; its grant returns before the release does
	h.released(at(31))        //
	h.released(at(40))        //
	require.Equal(t, []time.Duration{2 * time.Millisecond, 0}, h.samples)
}

func TestParseWorkloads(t *testing.T) {
	t.Parallel()
	all, err := ParseWorkloads("")
	require.NoError(t, err)
	require.Equal(t, Workloads, all)
	got, err := ParseWorkloads("shared, hot-exclusive")
	require.NoError(t, err)
	var names []string
	for _, w := range got {
		names = append(names, w.Name())
	}
	require.Equal(t, []string{"distinct-shared", "hot-exclusive", "hot-shared"}, names)
	_, err = ParseWorkloads("lukewarm")
	require.ErrorContains(t, err, `unknown workload "lukewarm"`)
}

func TestPercentileAndMedian(t *testing.T) {
	t.Parallel()
	var d []time.Duration
	for i := 1; i <= 1000; i++ {
		d = append(d, time.Duration(i))
	}
	require.Equal(t, time.Duration(500), percentile(d, 0.5))
	require.Equal(t, time.Duration(990), percentile(d, 0.99))
	require.Equal(t, time.Duration(999), percentile(d, 0.999))
	require.Equal(t, time.Duration(0), percentile(nil, 0.5))
	require.Equal(t, 2.0, median([]float64{3, 1, 2}))
	require.Equal(t, 2.5, median([]float64{4, 1, 2, 3}))
	require.Equal(t, "1,234,568", thousands(1234567.8))
}

// TestRun runs every cell and the scale runs, tiny, on SQLite, and checks
// the report's shape (not its speed).
func TestRun(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	var steps []Progress
	r, err := Run(context.Background(), Config{
		// 300ms windows, not 150ms: under the whole suite's load (-race)
		// the scale run's window with 300 locks held once counted no pair.
		// A scale TTL of 3s, not 1s: under that load a renewal of the held
		// locks' lease once came later than 0.9s, and Lock.Err reports a
		// passed trust deadline at once.
		DSN: db.DSN, Duration: 300 * time.Millisecond, Warmup: 100 * time.Millisecond, Workers: []int{1, 3}, Runs: 2,
		Scale: true, HeldLocks: 300, Clients: 5, ClientsDuration: time.Second, ScaleTTL: 3 * time.Second,
		Progress: func(p Progress) {
			if p.Done {
				steps = append(steps, p)
			}
		},
	})
	require.NoError(t, err)
	// SQLite: no advisory floor; the two-commit floor has no shared mode.
	want := []string{
		"distinct-exclusive/1/sqldlm", "distinct-exclusive/1/two-commit", "distinct-exclusive/3/sqldlm", "distinct-exclusive/3/two-commit",
		"distinct-shared/1/sqldlm", "distinct-shared/3/sqldlm",
		"hot-exclusive/1/sqldlm", "hot-exclusive/1/two-commit", "hot-exclusive/3/sqldlm", "hot-exclusive/3/two-commit",
		"hot-shared/1/sqldlm", "hot-shared/3/sqldlm",
	}
	var got []string
	for _, row := range r.Rows {
		got = append(got, row.Workload+"/"+itoa(row.Workers)+"/"+row.Impl)
		require.Positive(t, row.PairsPerSecond, "%+v", row)
		require.Len(t, row.RunsPairsPerSecond, 2)
		require.Positive(t, row.StatementsPerPair, "%+v", row)
		require.Nil(t, row.DBCPUSeconds, "SQLite has no server process")
		if row.Impl == ImplSqldlm && row.Mode == "exclusive" {
			require.NotNil(t, row.RatioTwoCommit)
		} else {
			require.Nil(t, row.RatioTwoCommit)
		}
		require.Nil(t, row.RatioAdvisory)
	}
	require.Equal(t, want, got)
	require.Len(t, steps, len(want)*2+8, "one done report per cell and run, and per phase of the scale runs")

	h := r.Scale.Held
	require.Equal(t, 300, h.Locks)
	require.Positive(t, h.PairsPerSecondNoneHeld)
	require.Positive(t, h.PairsPerSecondHeld)
	require.Equal(t, 1.0, h.StatementsPerRenewalNoneHeld, "a renewal is one statement")
	require.Equal(t, 1.0, h.StatementsPerRenewalHeld, "however many locks are held")
	require.Positive(t, h.HeapBytesPerLock)
	require.Zero(t, h.LeasesLost)
	c := r.Scale.Clients
	require.Equal(t, 5, c.Clients)
	require.Zero(t, c.LeasesLost)
	require.Zero(t, c.LocksLost)
	require.Positive(t, c.Renewals)

	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	require.Regexp(t, `(?m)^hot-exclusive +3 +two-commit +[0-9,]+ `, table.String())
	require.NotContains(t, table.String(), "÷ETCD", "no etcd column when etcd did not run")
	require.Contains(t, table.String(), "statements per renewal: 1.00 with none held, 1.00 with all held")
	var img bytes.Buffer
	require.NoError(t, r.WritePlot(&img))
	_, err = png.Decode(&img)
	require.NoError(t, err)
}

func itoa(n int) string { return strconv.Itoa(n) }

// A chart one panel wide shows its whole title, on more lines; a wide one
// keeps it on one.
func TestTitleLines(t *testing.T) {
	font := plot.DefaultFont
	font.Size = 14
	sty := draw.TextStyle{Font: font, Handler: plot.DefaultTextHandler}
	title := "sqldlm bench, postgres (127.0.0.1:5432): acquire+release pairs/s, median of 3 run(s) of 3s per bar"
	narrow := 4.6*vg.Inch - 0.2*vg.Inch
	lines := titleLines(sty, title, narrow)
	require.Greater(t, len(lines), 1)
	for _, l := range lines {
		require.LessOrEqual(t, sty.Width(l), narrow, "%q fits", l)
	}
	require.Equal(t, title, strings.Join(lines, " "), "nothing is lost")
	require.Equal(t, []string{title}, titleLines(sty, title, 3*narrow))
}

// The two-commit floor asks again after a deadlock or a certification
// conflict (Galera, two nodes inserting one name), as sqldlm does, instead
// of failing the cell; other errors still fail it.
func TestFloorConflictIsRetried(t *testing.T) {
	require.True(t, conflict(fmt.Errorf("insert: %w", &mysql.MySQLError{Number: 1213})))
	require.True(t, conflict(&mysql.MySQLError{Number: 1205}))
	require.True(t, conflict(&pgconn.PgError{Code: "40P01"}))
	require.False(t, conflict(&mysql.MySQLError{Number: 1062}))
	require.False(t, conflict(errors.New("connection refused")))
	require.False(t, conflict(nil))
}

// The coordination section of the table: every figure where it belongs,
// the watcher's wake-up and interval said, and one blank line before it
// (the header's) when it is all the report has.
func TestCoordinationTable(t *testing.T) {
	t.Parallel()
	r := &Report{Dialect: "mysql", Server: "MariaDB 11.8", Host: "127.0.0.1:3306", Coordination: &Coordination{
		TTLSeconds: 2,
		Watch: &WatchRun{Wakeup: "polling", WatchIntervalSeconds: 1, DurationSeconds: 30, MemberClients: 4, OpsPerSecond: 20,
			Joins: 301, Leaves: 296, JoinP50Ms: 512.25, JoinP99Ms: 991.5, JoinMaxMs: 1003, LeaveP50Ms: 498, LeaveP99Ms: 988.04, LeaveMaxMs: 999.9},
		Failover: &FailoverRun{TTLSeconds: 2, Rounds: 3, Seconds: []float64{1.912, 1.5, 2.0441}, MinSeconds: 1.5, MedianSeconds: 1.912, MaxSeconds: 2.0441},
		Semaphore: &SemaphoreRun{Limit: 8, Workers: 32, Clients: 8, DurationSeconds: 5, PairsPerSecond: 1234.4, Pairs: 6172,
			P50Ms: 20.5, P99Ms: 80.25, WaitP99Ms: 79.5, StatementsPerPair: 6.5},
		WriteLoad: &WriteLoadRun{Members: 1000, Clients: 10, TTLSeconds: 2, RenewIntervalSeconds: 2.0 / 3, WindowSeconds: 30,
			ExpectedStatementsPerSecond: 15, JoinSeconds: 2.54,
			StatementsPerSecondNone: 14.9, StatementsPerSecondMembers: 15.1, RenewalsPerClientPeriodNone: 0.99,
			RenewalsPerClientPeriodMembers: 1.01, StatementsPerRenewalNone: 1, StatementsPerRenewalMembers: 1},
	}}
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	_, section, ok := strings.Cut(b.String(), "db cpu: \n")
	require.True(t, ok, b.String())
	require.Equal(t, `
coordination:
  watch (polling every 1s; 4 member Clients, 20 changes/s for 30s), from the call's return to the event:
    Join  -> MemberJoined p50/p99/max 512.2/991.5/1003.0 ms (301)
    Leave -> MemberLeft   p50/p99/max 498.0/988.0/999.9 ms (296)
  leader failover, SIGKILL to a waiting standby's election (TTL 2s, 3 rounds): min/median/max 1.50/1.91/2.04 s (1.91, 1.50, 2.04)
  semaphore, limit 8, 32 workers on 8 Clients: 1,234 acquire+release pairs/s, p50/p99 20.50/80.25 ms, wait p99 79.50 ms, 6.50 statements/pair
  write load, 10 Clients (TTL 2s, renewal every 667ms, reapers off), 30s quiet windows:
    no member:     14.90 statements/s, 0.99 renewals per Client per period, 1.00 statements per renewal
    1,000 members: 15.10 statements/s, 1.01 renewals per Client per period, 1.00 statements per renewal
    expected 15.00 statements/s (one renewal per Client per period); joining the members took 2.5s; leases lost: 0, members lost: 0
`, section)

	// PostgreSQL: notifications wake the watcher; what went wrong shows.
	r.Coordination.Watch.Wakeup = "LISTEN/NOTIFY"
	r.Coordination.Watch.Missed, r.Coordination.Watch.Resyncs = 2, 1
	r.Coordination.Watch.Errors, r.Coordination.Watch.LastError = 3, "connection refused"
	r.Coordination.Semaphore.Errors, r.Coordination.Semaphore.LastError = 4, "deadlock"
	r.Rows = []Row{{Workload: "hot-exclusive", Workers: 1, Impl: ImplSqldlm}}
	b.Reset()
	require.NoError(t, r.WriteTable(&b))
	require.Contains(t, b.String(), "\n\ncoordination:\n  watch (LISTEN/NOTIFY, polling every 1s as a fallback; 4 member Clients")
	require.Contains(t, b.String(), "\n    missed: 2, resyncs: 1, failed joins: 3 connection refused\n")
	require.Contains(t, b.String(), "\n    (4 failed calls were retried, the last: deadlock)\n")
}

// The coordination figures' JSON names are stable, and the section is
// null when it did not run.
func TestCoordinationJSON(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(&Report{})
	require.NoError(t, err)
	require.Contains(t, string(b), `"coordination":null`)
	b, err = json.Marshal(&Coordination{Watch: &WatchRun{}, Failover: &FailoverRun{}, Semaphore: &SemaphoreRun{}, WriteLoad: &WriteLoadRun{}})
	require.NoError(t, err)
	var got map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(b, &got))
	require.Contains(t, got, "ttl_seconds")
	for section, fields := range map[string][]string{
		"watch":      {"wakeup", "watch_interval_seconds", "join_p50_ms", "join_p99_ms", "leave_p50_ms", "leave_p99_ms", "missed"},
		"failover":   {"ttl_seconds", "rounds", "seconds", "min_seconds", "median_seconds", "max_seconds"},
		"semaphore":  {"limit", "workers", "clients", "pairs_per_second", "p50_ms", "p99_ms", "statements_per_pair"},
		"write_load": {"members", "clients", "statements_per_second_none", "statements_per_second_members", "renewals_per_client_period_none", "renewals_per_client_period_members"},
	} {
		var m map[string]any
		require.NoError(t, json.Unmarshal(got[section], &m), section)
		for _, f := range fields {
			require.Contains(t, m, f, section)
		}
	}
}
