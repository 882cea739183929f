package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/testdb"
)

// fakePeerEnv makes the test binary a fake peer: "ok" writes a cell per
// workload and worker count asked, with workers×100 pairs a second;
// "overlap" the same, each cell with 3 overlapping grants; "fail" fails;
// "short" leaves the last cell out. It records its
// arguments in the file fakePeerArgsEnv names.
const (
	fakePeerEnv     = "SQLDLM_BENCH_FAKE_PEER"
	fakePeerArgsEnv = "SQLDLM_BENCH_FAKE_PEER_ARGS"
)

func fakePeer() int {
	fs := flag.NewFlagSet("fake", flag.ContinueOnError)
	workloads := fs.String("workloads", "", "")
	workers := fs.String("workers", "", "")
	duration := fs.Duration("duration", 0, "")
	fs.Duration("warmup", 0, "")
	fs.Duration("ttl", 0, "")
	fs.String("tag", "", "")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	_ = os.WriteFile(os.Getenv(fakePeerArgsEnv), []byte(strings.Join(os.Args[1:], " ")), 0o644)
	mode := os.Getenv(fakePeerEnv)
	if mode == "fail" {
		fmt.Fprintln(os.Stderr, "etcdpeer: start etcd: the fake cannot")
		return 1
	}
	enc := json.NewEncoder(os.Stdout)
	wls, ws := strings.Split(*workloads, ","), strings.Split(*workers, ",")
	for i, wl := range wls {
		for j, w := range ws {
			if mode == "short" && i == len(wls)-1 && j == len(ws)-1 {
				continue
			}
			n, _ := strconv.Atoi(w)
			pairs := int64(float64(n*100) * duration.Seconds())
			c := peerCell{Workload: wl, Workers: n, Sessions: 1, EtcdVersion: "3.6.0-fake", Seconds: duration.Seconds(), Pairs: pairs,
				LatencyNs: []int64{3e6, 1e6, 2e6}, WaitNs: []int64{1e6, 1e6, 1e6}, CPUNs: int64(pairs) * 1e5}
			if strings.HasPrefix(wl, "hot") {
				c.HandoverNs = []int64{5e5}
			}
			if mode == "overlap" {
				c.Overlaps = 3
			}
			_ = enc.Encode(c)
		}
	}
	return 0
}

// TestRunWithPeer: --peers etcd runs the peer once per run with the
// exclusive workloads only, and its cells become rows, with the ratio
// sqldlm/etcd on sqldlm's rows of the same workload and worker count.
func TestRunWithPeer(t *testing.T) {
	db := testdb.OpenMigrated(t, testdb.SQLite)
	argsFile := filepath.Join(t.TempDir(), "args")
	t.Setenv(fakePeerEnv, "ok")
	t.Setenv(fakePeerArgsEnv, argsFile)
	var steps []string
	cfg := Config{
		DSN: db.DSN, Duration: 200 * time.Millisecond, Warmup: 50 * time.Millisecond, Workers: []int{1, 3}, Runs: 2,
		Workloads: []Workload{{Hot: true}, {Shared: true}}, Impls: []string{ImplSqldlm}, Peers: []string{PeerEtcd},
		EtcdPeer: []string{os.Args[0]}, Procs: 4,
		Progress: func(p Progress) {
			if p.Done {
				steps = append(steps, p.What)
			}
		},
	}
	r, err := Run(context.Background(), cfg)
	require.NoError(t, err)
	args, err := os.ReadFile(argsFile)
	require.NoError(t, err)
	require.Regexp(t, `^-workloads hot-exclusive -workers 1,3 -duration 200ms -warmup 50ms -ttl 15s -tag [0-9a-f]+-r2$`, string(args),
		"the peer is asked for the exclusive workloads only")
	require.Contains(t, steps, "run 2/2 etcd: every exclusive cell")

	var got []string
	for _, row := range r.Rows {
		got = append(got, row.Workload+"/"+itoa(row.Workers)+"/"+row.Impl)
		switch {
		case row.Impl == PeerEtcd:
			require.InDelta(t, float64(row.Workers*100), row.PairsPerSecond, 1, "%+v", row)
			require.Len(t, row.RunsPairsPerSecond, 2)
			require.Equal(t, 2.0, row.P50Ms)
			require.NotNil(t, row.HandoverP50Ms)
			require.NotNil(t, row.DBCPUSecondsPer1000Pairs, "the peer process's CPU")
			require.InDelta(t, 100.0, *row.DBCPUSecondsPer1000Pairs*1000, 0.001, "0.1 ms per pair")
			require.Contains(t, row.Primitive, "etcd 3.6.0-fake concurrency.Mutex")
		case row.Mode == "exclusive":
			require.NotNil(t, row.RatioEtcd, "%+v", row)
			require.InDelta(t, row.PairsPerSecond/float64(row.Workers*100), *row.RatioEtcd, 1e-9)
		default:
			require.Nil(t, row.RatioEtcd, "%+v", row)
		}
	}
	require.Equal(t, []string{"hot-exclusive/1/sqldlm", "hot-exclusive/1/etcd", "hot-exclusive/3/sqldlm", "hot-exclusive/3/etcd",
		"distinct-shared/1/sqldlm", "distinct-shared/3/sqldlm"}, got)
	var table bytes.Buffer
	require.NoError(t, r.WriteTable(&table))
	require.Contains(t, table.String(), "÷ETCD")
	require.Regexp(t, `(?m)^hot-exclusive +3 +etcd +300 `, table.String())

	// Grants a peer made while another worker held the name are not a
	// lock's figures: each counts as a failed call, and the row says why.
	t.Setenv(fakePeerEnv, "overlap")
	r, err = Run(context.Background(), cfg)
	require.NoError(t, err)
	for _, row := range r.Rows {
		if row.Impl == PeerEtcd {
			require.Equal(t, int64(6), row.Errors, "3 per run, 2 runs: %+v", row)
			require.Contains(t, row.LastError, "3 grants were made while another worker held the name")
		} else {
			require.Zero(t, row.Errors, "%+v", row)
		}
	}

	for mode, want := range map[string]string{
		"fail":  "the fake cannot",
		"short": "no result for hot-exclusive with 3 workers",
	} {
		t.Setenv(fakePeerEnv, mode)
		_, err := Run(context.Background(), cfg)
		require.ErrorContains(t, err, want, mode)
	}
	_, err = Run(context.Background(), Config{DSN: db.DSN, Peers: []string{"zookeeper"}})
	require.ErrorContains(t, err, `unknown peer "zookeeper": use etcd`)
}
