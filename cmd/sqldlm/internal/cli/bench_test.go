package cli

import (
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/cmd/sqldlm/internal/bench"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// benchRowsWant lists the rows `sqldlm bench --workers 1,8` must report on
// each dialect: sqldlm everywhere; the two-commit floor for exclusive
// workloads; the advisory floor on PostgreSQL (with a shared mode) and MySQL
// (exclusive only).
func benchRowsWant(kind string) []string {
	var want []string
	for _, wl := range []string{"distinct-exclusive", "distinct-shared", "hot-exclusive", "hot-shared"} {
		shared := wl == "distinct-shared" || wl == "hot-shared"
		for _, w := range []int{1, 8} {
			want = append(want, fmt.Sprintf("%s/%d/sqldlm", wl, w))
			if !shared {
				want = append(want, fmt.Sprintf("%s/%d/two-commit", wl, w))
			}
			if kind == testdb.Postgres || (kind == testdb.MySQL && !shared) {
				want = append(want, fmt.Sprintf("%s/%d/advisory", wl, w))
			}
		}
	}
	return want
}

// TestBench is the smoke test of `sqldlm bench`: every expected row with a
// positive rate in JSON, a valid PNG, and the table. No timing is asserted.
func TestBench(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, kind)
			code, _, errOut := run(t, "migrate", "up", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code, errOut)

			plot := filepath.Join(t.TempDir(), "bench.png")
			// A warm-up long enough for a cell's first grants (a lease, a
			// listening connection) on a machine loaded by the rest of the
			// suite: with the default (a fifth of 300ms) a cell could end
			// before its first pair.
			// And 600ms windows: with the cluster tests running beside it, a
			// 300ms window of 8 SQLite workers once counted no pair.
			code, out, errOut := run(t, "bench", "--dsn", db.DSN, "--duration", "600ms", "--warmup", "500ms", "--workers", "1,8",
				"--json", "--plot", plot)
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, errOut, "[1/", "progress lines on stderr")

			var report map[string]any
			require.NoError(t, json.Unmarshal([]byte(out), &report), out)
			require.Equal(t, kind, report["dialect"])
			for _, field := range []string{"server", "host", "settings", "machine", "duration_seconds", "runs", "db_cpu", "rows", "scale"} {
				require.Contains(t, report, field)
			}
			var got []string
			for _, r := range report["rows"].([]any) {
				row := r.(map[string]any)
				got = append(got, fmt.Sprintf("%s/%v/%s", row["workload"], row["workers"], row["impl"]))
				require.Positive(t, row["pairs_per_second"].(float64), "%v", row)
				for _, field := range []string{"p50_ms", "p99_ms", "p999_ms", "wait_p99_ms", "handover_p50_ms", "handover_p99_ms",
					"db_cpu_seconds", "db_cpu_seconds_per_1000_pairs", "statements_per_pair", "ratio_two_commit", "ratio_advisory"} {
					require.Contains(t, row, field)
				}
				if row["impl"] == "sqldlm" && row["mode"] == "exclusive" {
					require.Positive(t, row["ratio_two_commit"].(float64), "%v", row)
				}
			}
			require.Equal(t, benchRowsWant(kind), got)

			f, err := os.Open(plot)
			require.NoError(t, err)
			defer f.Close()
			img, err := png.Decode(f)
			require.NoError(t, err)
			require.Greater(t, img.Bounds().Dx(), 500)

			// 300ms, not 100ms: under the whole suite's load (-race, 2
			// cores) a hot-name handover can take tens of milliseconds, and
			// a 100ms window once counted no pair.
			code, out, errOut = run(t, "bench", "--dsn", db.DSN, "--duration", "300ms", "--warmup", "500ms", "--workers", "2",
				"--workloads", "hot-exclusive", "--vacuum")
			require.Equal(t, ExitOK, code, errOut)
			require.Regexp(t, `(?m)^WORKLOAD +W +IMPL +PAIRS/S +P50 ms +P99 ms +P99.9 ms +WAIT P99 +HANDOVER P50/P99 +DB CPU s +DB ms/1k +STMT/PAIR +÷2-COMMIT +÷ADVISORY$`, out)
			require.Regexp(t, `(?m)^hot-exclusive +2 +sqldlm +[1-9][0-9,]* `, out)
			require.Regexp(t, `(?m)^hot-exclusive +2 +two-commit +[1-9][0-9,]* `, out)
			if kind != testdb.SQLite {
				require.Regexp(t, `(?m)^hot-exclusive +2 +advisory +[1-9][0-9,]* `, out)
			}
		})
	}
}

func TestBenchUsage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--dsn", "sqlite:///tmp/x.db", "--workers", "1,zero"}, `--workers: "zero" is not a positive number`},
		{[]string{"bench", "--dsn", "sqlite:///tmp/x.db", "--workloads", "tepid"}, `unknown workload "tepid"`},
		{[]string{"bench", "--dsn", "sqlite:///tmp/x.db", "--duration", "0s"}, "--duration must be positive"},
		{[]string{"bench", "--dsn", ""}, "pass --dsn DSN"},
		{[]string{"bench", "--dsn", "sqlite:///tmp/x.db", "--json", "--output", "table"}, "--json and --output table contradict"},
		{[]string{"bench", "--dsn", "sqlite:///tmp/x.db", "--coordination", "--failovers", "0"}, "--failovers, --members, --member-clients, --semaphore-limit and --semaphore-workers must be positive"},
		{[]string{"bench", "--dsn", "sqlite:///tmp/x.db", "--coordination-only", "--coord-ttl", "500ms"}, "--coord-ttl must be at least 1s"},
		{[]string{"bench", "--dsn", "sqlite:///tmp/x.db", "--impls", "sqldlm,redlock"}, `--impls: unknown implementation "redlock": use sqldlm, two-commit, advisory`},
		{[]string{"bench", "--dsn", "sqlite:///tmp/x.db", "--peers", "zookeeper"}, `--peers: unknown peer "zookeeper": use etcd`},
	} {
		code, _, errOut := run(t, tt.args...)
		require.Equal(t, ExitUsage, code, errOut)
		require.Contains(t, errOut, tt.want)
	}
}

func TestBenchNotMigrated(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	code, _, errOut := run(t, "bench", "--dsn", db.DSN, "--duration", "100ms")
	require.Equal(t, ExitError, code)
	require.Contains(t, errOut, "sqldlm migrate up")
}

// With the audit log on, bench says that its pairs also write audit rows,
// and the report records it.
func TestBenchSaysAuditLogIsOn(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	code, _, errOut := run(t, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, ExitOK, code, errOut)
	code, _, errOut = run(t, "log", "on", "--dsn", db.DSN)
	require.Equal(t, ExitOK, code, errOut)
	code, out, errOut := run(t, "bench", "--dsn", db.DSN, "--duration", "100ms", "--warmup", "100ms", "--workers", "1",
		"--workloads", "distinct-exclusive", "--impls", "sqldlm", "--json")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, errOut, "the audit log is on in this schema: every grant and release the benchmark makes also writes an audit row")
	var report struct {
		Settings map[string]string `json:"settings"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &report), out)
	require.Equal(t, "on", report.Settings["sqldlm audit log"])
}

// --node spreads the workers over the nodes of a multi-writer cluster; here
// both "nodes" are one server, which exercises the spreading: a pool per
// node, every node's host in the report, no advisory floor (each node's
// advisory locks are its own).
func TestBenchSpreadOverNodes(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.MySQL)
	code, _, errOut := run(t, "migrate", "up", "--dsn", db.DSN)
	require.Equal(t, ExitOK, code, errOut)
	code, out, errOut := run(t, "bench", "--dsn", db.DSN, "--node", db.DSN, "--duration", "200ms", "--warmup", "300ms",
		"--workers", "1,2", "--workloads", "distinct-exclusive,hot-exclusive", "--json")
	require.Equal(t, ExitOK, code, errOut)
	var report struct {
		Host     string            `json:"host"`
		Settings map[string]string `json:"settings"`
		Rows     []struct {
			Workload       string  `json:"workload"`
			Workers        int     `json:"workers"`
			Impl           string  `json:"impl"`
			PairsPerSecond float64 `json:"pairs_per_second"`
		} `json:"rows"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &report), out)
	require.Contains(t, report.Host, ",")
	require.Equal(t, "2", report.Settings["spread over nodes"])
	var impls []string
	for _, r := range report.Rows {
		impls = append(impls, r.Impl)
		require.Positive(t, r.PairsPerSecond, "%+v", r)
	}
	require.Contains(t, impls, "sqldlm")
	require.Contains(t, impls, "two-commit")
	require.NotContains(t, impls, "advisory")
}

// TestBenchCoordination is the smoke test of `sqldlm bench
// --coordination-only` on SQLite, tiny (a semaphore of 2 permits and 4
// workers, for 1s: 32 workers on SQLite drain too slowly under -race and
// the suite's load, and a 300ms window once counted no pair): every run
// reports, the killed
// leader (a child process: this test binary as `sqldlm bench-child`) is
// replaced, and members add no statement to their Clients' renewals. No
// timing is asserted. The TTL is 3s, not the default 2s (and the windows 2s,
// so that each holds a renewal of every Client): under -race and
// the suite's load a renewal on SQLite once came too late while the 50
// members joined, and the lost lease ended the run.
func TestBenchCoordination(t *testing.T) {
	t.Parallel()
	db := testdb.Open(t, testdb.SQLite)
	code, out, errOut := run(t, "bench", "--dsn", db.DSN, "--migrate", "--coordination-only", "--coord-duration", "2s", "--coord-ttl", "3s",
		"--watch-interval", "100ms", "--failovers", "1", "--members", "50", "--member-clients", "3",
		"--semaphore-limit", "2", "--semaphore-workers", "4", "--duration", "1s", "--warmup", "500ms", "--json")
	require.Equal(t, ExitOK, code, errOut)
	require.Contains(t, errOut, "[6/6] coordination: statements of 3 Clients holding 50 members")
	var r bench.Report
	require.NoError(t, json.Unmarshal([]byte(out), &r), out)
	require.Empty(t, r.Rows, "no cells")
	require.Nil(t, r.Scale)
	co := r.Coordination
	require.NotNil(t, co, out)

	w := co.Watch
	require.Equal(t, "polling", w.Wakeup)
	require.Equal(t, 0.1, w.WatchIntervalSeconds)
	require.Positive(t, w.Joins, "%+v", w)
	require.Zero(t, w.Missed, "a watcher reports every change it could see: %+v", w)
	require.GreaterOrEqual(t, w.JoinP99Ms, w.JoinP50Ms)

	f := co.Failover
	require.Equal(t, 1, f.Rounds)
	require.Len(t, f.Seconds, 1)
	require.Positive(t, f.MedianSeconds)

	s := co.Semaphore
	require.Equal(t, 2, s.Limit)
	require.Equal(t, 4, s.Workers)
	require.Positive(t, s.PairsPerSecond, "%+v", s)
	require.Positive(t, s.StatementsPerPair)

	l := co.WriteLoad
	require.Equal(t, 50, l.Members)
	require.Equal(t, 3, l.Clients)
	require.Zero(t, l.MembersLost)
	// One statement per renewal, with or without members (within a
	// window's edges: a renewal in flight as it opens or closes).
	require.InDelta(t, 1, l.StatementsPerRenewalNone, 0.5, "%+v", l)
	require.InDelta(t, 1, l.StatementsPerRenewalMembers, 0.5, "%+v", l)
}
