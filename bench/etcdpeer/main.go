// Command etcdpeer runs `sqldlm bench`'s lock workloads on etcd, the peer
// sqldlm's users would otherwise deploy, so that the benchmark can show the
// two side by side in one run. It lives in a module of its own: the
// library and the sqldlm command gain no dependency on etcd.
//
// It starts an embedded etcd server (go.etcd.io/etcd/server/v3/embed, one
// member, fsync on, as etcd runs by default) on free loopback ports in a
// temporary directory, and for each workload and worker count (a cell)
// runs the workers in a loop: concurrency.Mutex Lock, then Unlock, each
// worker with a Mutex of its own. On distinct names the workers share
// sessions (concurrency.Session, a lease kept alive by its client), one
// per 8 workers; on a hot name each worker has a session, on a client
// connection, of its own, as a separate process would: a Mutex's key is
// its prefix and its session's lease, so two Mutexes of one session on one
// name share a key and both "hold" it (the peer counts such overlaps).
//
// It writes one JSON object per cell to stdout, in the order asked (the
// fields of cellJSON; `sqldlm bench --peers etcd` reads them), and its
// progress to stderr. CPU is this process's: the server and the clients
// together.
//
// Usage:
//
//	go run . -workloads distinct-exclusive,hot-exclusive -workers 1,8,64 -duration 5s -warmup 1s -ttl 15s -tag r1
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
)

// cellJSON is one cell's result, as `sqldlm bench` reads it. Durations are
// in nanoseconds, the samples sorted.
type cellJSON struct {
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
	// Overlaps counts grants on the hot name made while another worker of
	// this process held it: 0 unless the Mutexes were not exclusive.
	Overlaps int64 `json:"overlaps"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "etcdpeer:", err)
		os.Exit(1)
	}
}

func run() error {
	workloads := flag.String("workloads", "distinct-exclusive,hot-exclusive", "comma-separated: distinct-exclusive, hot-exclusive (etcd's Mutex has no shared mode)")
	workers := flag.String("workers", "1,8,64", "comma-separated worker counts")
	duration := flag.Duration("duration", 5*time.Second, "measured time of each cell")
	warmup := flag.Duration("warmup", time.Second, "unmeasured time before each cell's window")
	ttl := flag.Duration("ttl", 15*time.Second, "TTL of the sessions' leases")
	tag := flag.String("tag", "r1", "makes the cells' key prefixes unique")
	shareSessions := flag.Bool("share-sessions", false, "on a hot name too, one session per 8 workers: their Mutexes then share a key and are not exclusive "+
		"(see overlaps); for comparison with runs that did this")
	flag.Parse()
	var ws []int
	for _, f := range strings.Split(*workers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-workers: %q is not a positive count", f)
		}
		ws = append(ws, n)
	}
	var wls []string
	for _, f := range strings.Split(*workloads, ",") {
		f = strings.TrimSpace(f)
		if f != "distinct-exclusive" && f != "hot-exclusive" {
			return fmt.Errorf("-workloads: %q: use distinct-exclusive or hot-exclusive", f)
		}
		wls = append(wls, f)
	}
	if *duration <= 0 || *warmup < 0 || *ttl < time.Second {
		return errors.New("-duration must be positive, -warmup not negative, -ttl at least 1s")
	}

	endpoint, stop, err := startServer()
	if err != nil {
		return err
	}
	defer stop()
	ctx := context.Background()
	enc := json.NewEncoder(os.Stdout)
	for _, wl := range wls {
		for _, w := range ws {
			fmt.Fprintf(os.Stderr, "etcdpeer: %s workers=%d\n", wl, w)
			res, err := cell(ctx, endpoint, wl, w, *shareSessions, *ttl, *warmup, *duration, fmt.Sprintf("%s/%s/%d", *tag, wl, w))
			if err != nil {
				return fmt.Errorf("%s workers=%d: %w", wl, w, err)
			}
			if err := enc.Encode(res); err != nil {
				return err
			}
		}
	}
	return nil
}

// startServer starts a one-member etcd in a temporary directory and
// returns its client endpoint and a function that stops it and removes the
// directory.
func startServer() (string, func(), error) {
	dir, err := os.MkdirTemp("", "sqldlm-bench-etcd-")
	if err != nil {
		return "", nil, err
	}
	ports := make([]int, 2)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			os.RemoveAll(dir)
			return "", nil, err
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	client := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[0])}
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[1])}
	cfg := embed.NewConfig()
	cfg.Name = "bench"
	cfg.Dir = dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.LogLevel = "error"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("etcd: %w", err)
	case <-time.After(time.Minute):
		e.Close()
		os.RemoveAll(dir)
		return "", nil, errors.New("etcd was not ready within a minute")
	}
	return client.String(), func() { e.Close(); os.RemoveAll(dir) }, nil
}

// cell runs one workload with n workers: warmup, then the measured window.
func cell(ctx context.Context, endpoint, wl string, n int, shareSessions bool, ttl, warmup, duration time.Duration, prefix string) (*cellJSON, error) {
	hot := wl == "hot-exclusive"
	sessions := (n + 7) / 8
	if hot && !shareSessions {
		sessions = n // one Mutex per session on the name: see the package doc
	}
	var ss []*concurrency.Session
	defer func() {
		for _, s := range ss {
			s.Close()
			s.Client().Close()
		}
	}()
	for range sessions {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 10 * time.Second})
		if err != nil {
			return nil, err
		}
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(ttl.Seconds())))
		if err != nil {
			cli.Close()
			return nil, err
		}
		ss = append(ss, s)
	}
	mutexes := make([]*concurrency.Mutex, n)
	for i := range mutexes {
		name := "/sqldlm-bench/" + prefix + "/hot"
		if !hot {
			name = "/sqldlm-bench/" + prefix + "/" + strconv.Itoa(i)
		}
		mutexes[i] = concurrency.NewMutex(ss[i%sessions], name)
	}

	cctx, cancel := context.WithTimeout(ctx, warmup+duration+time.Minute)
	defer cancel()
	start := time.Now()
	from, end := start.Add(warmup), start.Add(warmup+duration)
	var ho *handovers
	if hot {
		ho = &handovers{from: from, end: end}
	}
	var (
		counted, errCount atomic.Int64
		holders, overlaps atomic.Int64
		errMu             sync.Mutex
		lastErr           error
		wg                sync.WaitGroup
		lat               = make([][]int64, n)
		wait              = make([][]int64, n)
	)
	fail := func(err error) {
		errMu.Lock()
		lastErr = err
		errMu.Unlock()
		if errCount.Add(1) >= 1000 {
			cancel()
		}
	}
	for i, m := range mutexes {
		wg.Go(func() {
			for {
				t0 := time.Now()
				if !t0.Before(end) || cctx.Err() != nil {
					return
				}
				if err := m.Lock(cctx); err != nil {
					if cctx.Err() == nil {
						fail(err)
						time.Sleep(time.Millisecond)
					}
					continue
				}
				t1 := time.Now()
				if hot && holders.Add(1) > 1 {
					overlaps.Add(1)
				}
				if ho != nil {
					ho.granted(t0, t1)
				}
				if hot {
					holders.Add(-1)
				}
				err := m.Unlock(cctx)
				t2 := time.Now()
				if ho != nil {
					ho.released(t2)
				}
				if err != nil {
					fail(err)
					continue
				}
				if !t2.Before(from) && !t2.After(end) {
					counted.Add(1)
					lat[i] = append(lat[i], int64(t2.Sub(t0)))
					wait[i] = append(wait[i], int64(t1.Sub(t0)))
				}
			}
		})
	}
	time.Sleep(time.Until(from))
	cpu0 := cpuTime()
	time.Sleep(time.Until(end))
	cpu1 := cpuTime()
	wg.Wait()
	if errCount.Load() >= 1000 {
		return nil, fmt.Errorf("%d errors, the last: %w", errCount.Load(), lastErr)
	}
	if cctx.Err() != nil {
		return nil, errors.New("the workers did not finish within a minute of the window's end")
	}
	res := &cellJSON{Workload: wl, Workers: n, Sessions: sessions, EtcdVersion: version.Version, Seconds: duration.Seconds(),
		Pairs: counted.Load(), CPUNs: int64(cpu1 - cpu0), Errors: errCount.Load(), Overlaps: overlaps.Load()}
	if lastErr != nil {
		res.LastError = lastErr.Error()
	}
	for i := range n {
		res.LatencyNs = append(res.LatencyNs, lat[i]...)
		res.WaitNs = append(res.WaitNs, wait[i]...)
	}
	slices.Sort(res.LatencyNs)
	slices.Sort(res.WaitNs)
	if ho != nil {
		res.HandoverNs = ho.samples
		slices.Sort(res.HandoverNs)
	}
	return res, nil
}

// handovers measures, as `sqldlm bench` does, the time from a release
// returning to the grant of a waiter returning: grant n follows release
// n-1, and is a handover when its Lock call began before that release
// returned (0 if it returned first).
type handovers struct {
	from, end time.Time

	mu          sync.Mutex
	grants      int64
	releases    int64
	lastRelease time.Time
	samples     []int64
}

func (h *handovers) granted(asked, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := h.grants
	h.grants++
	if k == 0 || now.Before(h.from) || now.After(h.end) {
		return
	}
	switch {
	case h.releases < k:
		h.samples = append(h.samples, 0)
	case asked.Before(h.lastRelease):
		h.samples = append(h.samples, int64(now.Sub(h.lastRelease)))
	}
}

func (h *handovers) released(now time.Time) {
	h.mu.Lock()
	h.releases++
	h.lastRelease = now
	h.mu.Unlock()
}

// cpuTime is this process's CPU time, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
