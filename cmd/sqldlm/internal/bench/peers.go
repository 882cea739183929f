package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Peers are the lock services [Config.Peers] can run beside sqldlm: the
// systems its users would otherwise deploy.
var Peers = []string{PeerEtcd}

// rowOrder is the order of a workload's rows for one worker count (and of
// the chart's bars): the implementations, then the peers.
var rowOrder = append(slices.Clone(Impls), Peers...)

// PeerEtcd is etcd's concurrency.Mutex on an embedded one-member server,
// run by the program in bench/etcdpeer (a module of its own, so that
// neither the library nor this command links etcd).
const PeerEtcd = "etcd"

// EtcdPeerDirDefault is where Config.EtcdPeerDir points by default:
// bench/etcdpeer of a checkout, relative to the working directory.
const EtcdPeerDirDefault = "bench/etcdpeer"

// peerSupports reports whether a peer can run wl: etcd's Mutex is
// exclusive only.
func peerSupports(peer string, wl Workload) bool {
	return peer == PeerEtcd && !wl.Shared
}

// peerCell is one cell as the peer program writes it (bench/etcdpeer's
// cellJSON): durations in nanoseconds, samples sorted.
type peerCell struct {
	Workload    string  `json:"workload"`
	Workers     int     `json:"workers"`
	Sessions    int     `json:"sessions"`
	EtcdVersion string  `json:"etcd_version"`
	Seconds     float64 `json:"seconds"`
	Pairs       int64   `json:"pairs"`
	LatencyNs   []int64 `json:"latency_ns"`
	WaitNs      []int64 `json:"wait_ns"`
	HandoverNs  []int64 `json:"handover_ns"`
	CPUNs       int64   `json:"cpu_ns"`
	Errors      int64   `json:"errors"`
	LastError   string  `json:"last_error"`
	Overlaps    int64   `json:"overlaps"` // grants on the hot name while another worker held it
}

// result converts the cell. Its DB CPU is the peer process's: the server
// and its clients together (they share one process).
func (p *peerCell) result() *cellResult {
	durs := func(ns []int64) []time.Duration {
		out := make([]time.Duration, len(ns))
		for i, n := range ns {
			out[i] = time.Duration(n)
		}
		slices.Sort(out)
		return out
	}
	r := &cellResult{seconds: p.Seconds, pairs: p.Pairs, latency: durs(p.LatencyNs), wait: durs(p.WaitNs),
		dbCPU: time.Duration(p.CPUNs), dbCPUOK: true, errors: p.Errors}
	if p.HandoverNs != nil {
		r.handovers = durs(p.HandoverNs)
	}
	if p.LastError != "" {
		r.lastErr = errors.New(p.LastError)
	}
	if p.Overlaps > 0 { // counted as failed calls: the figures are not those of a lock
		r.errors += p.Overlaps
		r.lastErr = fmt.Errorf("%d grants were made while another worker held the name: the peer's locks were not exclusive", p.Overlaps)
	}
	return r
}

// peerCommand is the command that runs the etcd peer: Config.EtcdPeer, or
// `go run .` in Config.EtcdPeerDir outside any workspace (the peer's
// module is not in the checkout's go.work).
func (c Config) peerCommand(ctx context.Context, args []string) *exec.Cmd {
	if len(c.EtcdPeer) > 0 {
		return exec.CommandContext(ctx, c.EtcdPeer[0], append(slices.Clone(c.EtcdPeer[1:]), args...)...)
	}
	cmd := exec.CommandContext(ctx, "go", append([]string{"run", "."}, args...)...)
	cmd.Dir = c.EtcdPeerDir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	return cmd
}

// runPeer runs the peer's cells of one run (every exclusive workload of
// the configuration with every worker count) and returns their results,
// keyed like the database cells, and what the peer ran, in words.
func (e *env) runPeer(ctx context.Context, peer, tag string) (map[cellKey]*cellResult, string, error) {
	var wls []Workload
	var names []string
	for _, wl := range e.cfg.Workloads {
		if peerSupports(peer, wl) {
			wls = append(wls, wl)
			names = append(names, wl.Name())
		}
	}
	if len(wls) == 0 {
		return nil, "", nil
	}
	workers := make([]string, len(e.cfg.Workers))
	for i, w := range e.cfg.Workers {
		workers[i] = strconv.Itoa(w)
	}
	args := []string{"-workloads", strings.Join(names, ","), "-workers", strings.Join(workers, ","),
		"-duration", e.cfg.Duration.String(), "-warmup", e.cfg.Warmup.String(),
		"-ttl", e.cfg.TTL.String(), "-tag", e.runID + "-" + tag}
	cmd := e.cfg.peerCommand(ctx, args)
	var stdout bytes.Buffer
	stderr := &tailBuffer{max: 4096}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	if err := cmd.Run(); err != nil {
		return nil, "", fmt.Errorf("peer %s (%s): %w; its stderr: %s", peer, strings.Join(cmd.Args, " "), err, stderr)
	}
	out := map[cellKey]*cellResult{}
	var version string
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<30)
	for sc.Scan() {
		var p peerCell
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return nil, "", fmt.Errorf("peer %s: a line of its output is not a cell: %w", peer, err)
		}
		wl, err := ParseWorkloads(p.Workload)
		if err != nil || len(wl) != 1 {
			return nil, "", fmt.Errorf("peer %s: a cell of unknown workload %q", peer, p.Workload)
		}
		out[cellKey{wl[0], p.Workers, peer}] = p.result()
		version = p.EtcdVersion
	}
	if err := sc.Err(); err != nil {
		return nil, "", fmt.Errorf("peer %s: %w", peer, err)
	}
	for _, wl := range wls {
		for _, w := range e.cfg.Workers {
			if out[cellKey{wl, w, peer}] == nil {
				return nil, "", fmt.Errorf("peer %s: no result for %s with %d workers", peer, wl.Name(), w)
			}
		}
	}
	prim := fmt.Sprintf("etcd %s concurrency.Mutex Lock+Unlock, embedded one-member server (fsync on), "+
		"a session per 8 workers on distinct names, per worker on a hot name (Mutexes of one session share a key); "+
		"DB CPU is the peer process's (server and clients)", version)
	return out, prim, nil
}
