package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Report is the result of [Run]. Its JSON field names are stable.
type Report struct {
	Dialect         string            `json:"dialect"`
	Server          string            `json:"server"`
	Host            string            `json:"host"`
	Settings        map[string]string `json:"settings"`
	Machine         Machine           `json:"machine"`
	Started         time.Time         `json:"started"`
	Finished        time.Time         `json:"finished"`
	DurationSeconds float64           `json:"duration_seconds"` // measured time of each cell
	WarmupSeconds   float64           `json:"warmup_seconds"`
	Runs            int               `json:"runs"`
	Procs           int               `json:"procs"` // Clients the sqldlm workers of a hot name are spread over, at most
	TTLSeconds      float64           `json:"ttl_seconds"`
	DBCPU           string            `json:"db_cpu"` // how the server's CPU was measured, or why not
	Pools           string            `json:"pools"`
	Vacuum          bool              `json:"vacuum"` // sqldlm's tables were vacuumed (PostgreSQL) or analyzed (MySQL) before each cell
	Rows            []Row             `json:"rows"`
	Scale           *Scale            `json:"scale"`        // null without --scale
	Coordination    *Coordination     `json:"coordination"` // null without --coordination
}

// Machine describes where the benchmark ran.
type Machine struct {
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Arch       string `json:"arch"`
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUModel   string `json:"cpu_model"`
	Kernel     string `json:"kernel"`
	// The 1-minute load average (/proc/loadavg) when the run started and
	// ended: anything else running on the machine shows here.
	LoadStart float64 `json:"load_start"`
	LoadEnd   float64 `json:"load_end"`
}

// Row is one cell's result: the median over the runs of each figure.
// Figures that do not apply are null in JSON ("n/a" in the table).
type Row struct {
	Workload  string `json:"workload"` // distinct-exclusive, distinct-shared, hot-exclusive, hot-shared
	Names     string `json:"names"`    // distinct, hot
	Mode      string `json:"mode"`     // exclusive, shared
	Workers   int    `json:"workers"`
	Impl      string `json:"impl"`      // sqldlm, two-commit, advisory, etcd (a peer)
	Primitive string `json:"primitive"` // what impl ran, in words

	PairsPerSecond     float64   `json:"pairs_per_second"` // acquire+release pairs completed per second
	RunsPairsPerSecond []float64 `json:"runs_pairs_per_second"`
	Pairs              int64     `json:"pairs"` // pairs measured (median run)
	// Latency of a pair: from the acquire call to the release's return.
	P50Ms  float64 `json:"p50_ms"`
	P99Ms  float64 `json:"p99_ms"`
	P999Ms float64 `json:"p999_ms"`
	// Wait: the acquire call alone.
	WaitP50Ms float64 `json:"wait_p50_ms"`
	WaitP99Ms float64 `json:"wait_p99_ms"`
	// Handover, hot-exclusive only: from a release returning to the grant
	// of a waiter returning.
	HandoverP50Ms *float64 `json:"handover_p50_ms"`
	HandoverP99Ms *float64 `json:"handover_p99_ms"`
	Handovers     *int64   `json:"handovers"`
	// The database server's CPU time during the window, when it runs on
	// this host.
	DBCPUSeconds             *float64 `json:"db_cpu_seconds"`
	DBCPUSecondsPer1000Pairs *float64 `json:"db_cpu_seconds_per_1000_pairs"`
	// This process's CPU time (all of it: the clients, the driver, the
	// benchmark) during the window.
	ClientCPUSeconds             *float64 `json:"client_cpu_seconds"`
	ClientCPUSecondsPer1000Pairs *float64 `json:"client_cpu_seconds_per_1000_pairs"`
	// Statements sent per pair (BEGIN and COMMIT count; polls count), and
	// server-side prepares per pair.
	StatementsPerPair float64 `json:"statements_per_pair"`
	PreparesPerPair   float64 `json:"prepares_per_pair"`
	Errors            int64   `json:"errors"`     // failed calls (retried), all runs
	LastError         string  `json:"last_error"` // the last of them, "" if none
	// sqldlm rows: sqldlm's pairs/s divided by the floor's, same workload
	// and workers; null when the floor did not run.
	RatioTwoCommit *float64 `json:"ratio_two_commit"`
	RatioAdvisory  *float64 `json:"ratio_advisory"`
	// sqldlm rows: sqldlm's pairs/s divided by etcd's (--peers etcd).
	RatioEtcd *float64 `json:"ratio_etcd"`
}

// Scale is the result of the scale runs.
type Scale struct {
	Held    *HeldScale    `json:"held"`
	Clients *ClientsScale `json:"clients"`
}

// HeldScale: one Client holding many locks.
type HeldScale struct {
	Locks   int `json:"locks"`
	Workers int `json:"workers"` // filling, measuring and releasing
	// The fill: acquires per second over the first and the last tenth of it.
	FillSeconds        float64 `json:"fill_seconds"`
	FillRateFirstTenth float64 `json:"fill_rate_first_tenth"`
	FillRateLastTenth  float64 `json:"fill_rate_last_tenth"`
	// Distinct-name exclusive pairs on the same Client with none held and
	// with Locks held, and the ratio held/none.
	PairsPerSecondNoneHeld float64 `json:"pairs_per_second_none_held"`
	PairsPerSecondHeld     float64 `json:"pairs_per_second_held"`
	Ratio                  float64 `json:"ratio"`
	// Statements the Client sent per lease renewal while idle, and the
	// renewal's round trip, with none held and with Locks held.
	StatementsPerRenewalNoneHeld float64 `json:"statements_per_renewal_none_held"`
	StatementsPerRenewalHeld     float64 `json:"statements_per_renewal_held"`
	RenewalMsNoneHeld            float64 `json:"renewal_ms_none_held"`
	RenewalMsHeld                float64 `json:"renewal_ms_held"`
	// Go heap growth (runtime.MemStats.HeapAlloc after GC) per held lock:
	// the handle and what the Client keeps for it.
	HeapBytesPerLock float64 `json:"heap_bytes_per_lock"`
	ReleaseSeconds   float64 `json:"release_seconds"`
	LeasesLost       int64   `json:"leases_lost"`
}

// ClientsScale: many Clients, one lock each, renewing their leases.
type ClientsScale struct {
	Clients                   int      `json:"clients"`
	TTLSeconds                float64  `json:"ttl_seconds"`
	DurationSeconds           float64  `json:"duration_seconds"`
	Pool                      int      `json:"pool"` // connections the Clients share
	Listeners                 bool     `json:"listeners"`
	SetupSeconds              float64  `json:"setup_seconds"` // creating the Clients and taking their locks
	LeasesLost                int64    `json:"leases_lost"`
	LocksLost                 int64    `json:"locks_lost"`
	Renewals                  int64    `json:"renewals"`
	RenewalsPerSecond         float64  `json:"renewals_per_second"`
	ExpectedRenewalsPerSecond float64  `json:"expected_renewals_per_second"` // Clients / (TTL/3)
	RenewalP50Ms              float64  `json:"renewal_p50_ms"`
	RenewalP99Ms              float64  `json:"renewal_p99_ms"`
	RenewalMaxMs              float64  `json:"renewal_max_ms"`
	DBCPUSeconds              *float64 `json:"db_cpu_seconds"`
	CloseSeconds              float64  `json:"close_seconds"`
}

// Coordination is the result of the coordination runs: membership, leader
// election and semaphores on the locks' lease and heartbeat.
type Coordination struct {
	TTLSeconds float64       `json:"ttl_seconds"` // of the failover and write-load runs' Clients
	Watch      *WatchRun     `json:"watch"`
	Failover   *FailoverRun  `json:"failover"`
	Semaphore  *SemaphoreRun `json:"semaphore"`
	WriteLoad  *WriteLoadRun `json:"write_load"`
}

// WatchRun: how soon a watcher on one Client (Client.Watch) reports the
// joins and leaves of members on other Clients. Each latency runs from the
// Join or Leave call returning to the watcher receiving the event (0 when
// the event came first).
type WatchRun struct {
	Wakeup               string  `json:"wakeup"`                 // LISTEN/NOTIFY (PostgreSQL), or polling
	WatchIntervalSeconds float64 `json:"watch_interval_seconds"` // the watcher's Config.WatchInterval
	DurationSeconds      float64 `json:"duration_seconds"`
	MemberClients        int     `json:"member_clients"` // Clients joining and leaving
	OpsPerSecond         float64 `json:"ops_per_second"` // joins and leaves asked for, at random times
	Joins                int     `json:"joins"`          // joins measured
	Leaves               int     `json:"leaves"`
	JoinP50Ms            float64 `json:"join_p50_ms"`
	JoinP99Ms            float64 `json:"join_p99_ms"`
	JoinMaxMs            float64 `json:"join_max_ms"`
	LeaveP50Ms           float64 `json:"leave_p50_ms"`
	LeaveP99Ms           float64 `json:"leave_p99_ms"`
	LeaveMaxMs           float64 `json:"leave_max_ms"`
	Missed               int     `json:"missed"`  // joins and leaves the watcher never reported
	Resyncs              int     `json:"resyncs"` // Resync events after the first (the watcher could not read)
	Errors               int64   `json:"errors"`  // failed joins (retried)
	LastError            string  `json:"last_error"`
}

// FailoverRun: a leader in a child process is killed with SIGKILL while a
// standby waits in Client.Campaign; each round is the time from the kill
// to the standby's Campaign returning elected.
type FailoverRun struct {
	TTLSeconds    float64   `json:"ttl_seconds"`
	Rounds        int       `json:"rounds"`
	Seconds       []float64 `json:"seconds"` // each round's
	MinSeconds    float64   `json:"min_seconds"`
	MedianSeconds float64   `json:"median_seconds"`
	MaxSeconds    float64   `json:"max_seconds"`
}

// SemaphoreRun: permit Acquire+Release pairs of one semaphore
// (Client.Semaphore(name, Limit)) by Workers workers on Clients Clients.
type SemaphoreRun struct {
	Limit             int     `json:"limit"`
	Workers           int     `json:"workers"`
	Clients           int     `json:"clients"`
	DurationSeconds   float64 `json:"duration_seconds"`
	PairsPerSecond    float64 `json:"pairs_per_second"`
	Pairs             int64   `json:"pairs"`
	P50Ms             float64 `json:"p50_ms"` // from Acquire's call to Release's return
	P99Ms             float64 `json:"p99_ms"`
	WaitP99Ms         float64 `json:"wait_p99_ms"` // Acquire alone
	StatementsPerPair float64 `json:"statements_per_pair"`
	Errors            int64   `json:"errors"`
	LastError         string  `json:"last_error"`
}

// WriteLoadRun: the statements Clients Clients (reapers off) send while
// quiet, with their leases alone and with Members members of one group
// spread over them.
type WriteLoadRun struct {
	Members                     int     `json:"members"`
	Clients                     int     `json:"clients"`
	TTLSeconds                  float64 `json:"ttl_seconds"`
	RenewIntervalSeconds        float64 `json:"renew_interval_seconds"` // TTL/3: a period
	WindowSeconds               float64 `json:"window_seconds"`         // each quiet window
	ExpectedStatementsPerSecond float64 `json:"expected_statements_per_second"`
	JoinSeconds                 float64 `json:"join_seconds"` // joining all the members
	// Statements per second, lease renewals per Client per period, and
	// statements per renewal, with no member and with Members members.
	StatementsPerSecondNone        float64 `json:"statements_per_second_none"`
	StatementsPerSecondMembers     float64 `json:"statements_per_second_members"`
	RenewalsPerClientPeriodNone    float64 `json:"renewals_per_client_period_none"`
	RenewalsPerClientPeriodMembers float64 `json:"renewals_per_client_period_members"`
	StatementsPerRenewalNone       float64 `json:"statements_per_renewal_none"`
	StatementsPerRenewalMembers    float64 `json:"statements_per_renewal_members"`
	LeasesLost                     int64   `json:"leases_lost"`
	MembersLost                    int     `json:"members_lost"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ptr[T any](v T) *T { return &v }

// median returns the median of xs (the mean of the middle two for an even
// count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// medianOf applies f to every run and returns the median.
func medianOf(rs []*cellResult, f func(*cellResult) float64) float64 {
	xs := make([]float64, len(rs))
	for i, r := range rs {
		xs[i] = f(r)
	}
	return median(xs)
}

// buildRow reduces a cell's runs to medians.
func buildRow(wl Workload, workers int, impl, primitive string, rs []*cellResult) Row {
	row := Row{
		Workload: wl.Name(), Names: wl.Names(), Mode: wl.Mode(), Workers: workers, Impl: impl, Primitive: primitive,
		PairsPerSecond: medianOf(rs, (*cellResult).rate),
		Pairs:          int64(medianOf(rs, func(r *cellResult) float64 { return float64(r.pairs) })),
		P50Ms:          medianOf(rs, func(r *cellResult) float64 { return ms(percentile(r.latency, 0.50)) }),
		P99Ms:          medianOf(rs, func(r *cellResult) float64 { return ms(percentile(r.latency, 0.99)) }),
		P999Ms:         medianOf(rs, func(r *cellResult) float64 { return ms(percentile(r.latency, 0.999)) }),
		WaitP50Ms:      medianOf(rs, func(r *cellResult) float64 { return ms(percentile(r.wait, 0.50)) }),
		WaitP99Ms:      medianOf(rs, func(r *cellResult) float64 { return ms(percentile(r.wait, 0.99)) }),
	}
	perPair := func(n func(*cellResult) int64) float64 {
		return medianOf(rs, func(r *cellResult) float64 {
			if r.pairs == 0 {
				return 0
			}
			return float64(n(r)) / float64(r.pairs)
		})
	}
	row.StatementsPerPair = perPair(func(r *cellResult) int64 { return r.statements })
	row.PreparesPerPair = perPair(func(r *cellResult) int64 { return r.prepares })
	for _, r := range rs {
		row.RunsPairsPerSecond = append(row.RunsPairsPerSecond, r.rate())
		row.Errors += r.errors
		if r.lastErr != nil {
			row.LastError = r.lastErr.Error()
		}
	}
	if wl.Hot && !wl.Shared && medianOf(rs, func(r *cellResult) float64 { return float64(len(r.handovers)) }) > 0 {
		row.HandoverP50Ms = ptr(medianOf(rs, func(r *cellResult) float64 { return ms(percentile(r.handovers, 0.50)) }))
		row.HandoverP99Ms = ptr(medianOf(rs, func(r *cellResult) float64 { return ms(percentile(r.handovers, 0.99)) }))
		row.Handovers = ptr(int64(medianOf(rs, func(r *cellResult) float64 { return float64(len(r.handovers)) })))
	}
	all := func(ok func(*cellResult) bool) bool {
		for _, r := range rs {
			if !ok(r) {
				return false
			}
		}
		return true
	}
	per1000 := func(d func(*cellResult) time.Duration) float64 {
		return medianOf(rs, func(r *cellResult) float64 {
			if r.pairs == 0 {
				return math.NaN()
			}
			return d(r).Seconds() / float64(r.pairs) * 1000
		})
	}
	if all(func(r *cellResult) bool { return r.dbCPUOK }) {
		row.DBCPUSeconds = ptr(medianOf(rs, func(r *cellResult) float64 { return r.dbCPU.Seconds() }))
		if v := per1000(func(r *cellResult) time.Duration { return r.dbCPU }); !math.IsNaN(v) {
			row.DBCPUSecondsPer1000Pairs = ptr(v)
		}
	}
	if all(func(r *cellResult) bool { return r.selfCPUOK }) {
		row.ClientCPUSeconds = ptr(medianOf(rs, func(r *cellResult) float64 { return r.selfCPU.Seconds() }))
		if v := per1000(func(r *cellResult) time.Duration { return r.selfCPU }); !math.IsNaN(v) {
			row.ClientCPUSecondsPer1000Pairs = ptr(v)
		}
	}
	return row
}

// fillRatios sets the sqldlm rows' ratios to the floors of the same
// workload and worker count.
func (r *Report) fillRatios() {
	find := func(wl string, workers int, impl string) *Row {
		for i := range r.Rows {
			if x := &r.Rows[i]; x.Workload == wl && x.Workers == workers && x.Impl == impl {
				return x
			}
		}
		return nil
	}
	for i := range r.Rows {
		row := &r.Rows[i]
		if row.Impl != ImplSqldlm {
			continue
		}
		if f := find(row.Workload, row.Workers, ImplTwoCommit); f != nil && f.PairsPerSecond > 0 {
			row.RatioTwoCommit = ptr(row.PairsPerSecond / f.PairsPerSecond)
		}
		if f := find(row.Workload, row.Workers, ImplAdvisory); f != nil && f.PairsPerSecond > 0 {
			row.RatioAdvisory = ptr(row.PairsPerSecond / f.PairsPerSecond)
		}
		if f := find(row.Workload, row.Workers, PeerEtcd); f != nil && f.PairsPerSecond > 0 {
			row.RatioEtcd = ptr(row.PairsPerSecond / f.PairsPerSecond)
		}
	}
}

// WriteTable writes the report as text tables.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "sqldlm bench: %s, %s at %s\n", r.Dialect, r.Server, r.Host)
	keys := make([]string, 0, len(r.Settings))
	for k := range r.Settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var set []string
	for _, k := range keys {
		set = append(set, k+"="+r.Settings[k])
	}
	fmt.Fprintf(w, "settings: %s\n", strings.Join(set, " "))
	fmt.Fprintf(w, "machine: %d CPUs (%s), GOMAXPROCS %d, %s %s/%s, load average %.2f at start, %.2f at end\n", r.Machine.CPUs,
		r.Machine.CPUModel, r.Machine.GOMAXPROCS, r.Machine.GoVersion, r.Machine.OS, r.Machine.Arch, r.Machine.LoadStart, r.Machine.LoadEnd)
	fmt.Fprintf(w, "cells: %s measured after %s warm-up, median of %d run(s); hot-name sqldlm workers on up to %d Clients; TTL %s\n",
		secs(r.DurationSeconds), secs(r.WarmupSeconds), r.Runs, r.Procs, secs(r.TTLSeconds))
	fmt.Fprintf(w, "pools: %s\n", r.Pools)
	fmt.Fprintf(w, "db cpu: %s\n", r.DBCPU)
	if r.Vacuum {
		fmt.Fprintln(w, "vacuum: sqldlm's tables and the floor's were vacuumed or analyzed before each cell and after the scale fill")
	} else if r.Settings["autovacuum"] == "off" {
		fmt.Fprintln(w, "warning: autovacuum is off and --vacuum was not given: dead rows pile up and slow the later cells")
	}
	fmt.Fprintln(w)
	if len(r.Rows) > 0 {
		// The etcd column only when etcd ran.
		etcd := slices.ContainsFunc(r.Rows, func(x Row) bool { return x.Impl == PeerEtcd })
		t := [][]string{{"WORKLOAD", "W", "IMPL", "PAIRS/S", "P50 ms", "P99 ms", "P99.9 ms", "WAIT P99", "HANDOVER P50/P99",
			"DB CPU s", "DB ms/1k", "STMT/PAIR", "÷2-COMMIT", "÷ADVISORY"}}
		if etcd {
			t[0] = append(t[0], "÷ETCD")
		}
		for _, x := range r.Rows {
			handover := "n/a"
			if x.HandoverP50Ms != nil {
				handover = fmt.Sprintf("%.2f/%.2f", *x.HandoverP50Ms, *x.HandoverP99Ms)
			}
			row := []string{x.Workload, strconv.Itoa(x.Workers), x.Impl, thousands(x.PairsPerSecond),
				fmt.Sprintf("%.2f", x.P50Ms), fmt.Sprintf("%.2f", x.P99Ms), fmt.Sprintf("%.2f", x.P999Ms), fmt.Sprintf("%.2f", x.WaitP99Ms),
				handover, optf(x.DBCPUSeconds, 1, 2), optf(x.DBCPUSecondsPer1000Pairs, 1000, 1), fmt.Sprintf("%.2f", x.StatementsPerPair),
				optf(x.RatioTwoCommit, 1, 2), optf(x.RatioAdvisory, 1, 2)}
			if etcd {
				row = append(row, optf(x.RatioEtcd, 1, 2))
			}
			t = append(t, row)
		}
		if err := writeColumns(w, t, 3); err != nil {
			return err
		}
		var errs int64
		for _, x := range r.Rows {
			errs += x.Errors
		}
		if errs > 0 {
			fmt.Fprintf(w, "(%d failed calls were retried; see \"errors\" in --output json)\n", errs)
		}
	}
	if r.Scale != nil {
		fmt.Fprintln(w)
		if h := r.Scale.Held; h != nil {
			fmt.Fprintf(w, "scale: one Client holding %s locks (%d workers)\n", thousands(float64(h.Locks)), h.Workers)
			fmt.Fprintf(w, "  fill: %.1fs, %s acquires/s over the first tenth, %s over the last\n", h.FillSeconds,
				thousands(h.FillRateFirstTenth), thousands(h.FillRateLastTenth))
			fmt.Fprintf(w, "  pairs/s with none held %s, with %s held %s: ratio %.2f\n", thousands(h.PairsPerSecondNoneHeld),
				thousands(float64(h.Locks)), thousands(h.PairsPerSecondHeld), h.Ratio)
			fmt.Fprintf(w, "  statements per renewal: %.2f with none held, %.2f with all held; renewal %.2f ms / %.2f ms\n",
				h.StatementsPerRenewalNoneHeld, h.StatementsPerRenewalHeld, h.RenewalMsNoneHeld, h.RenewalMsHeld)
			fmt.Fprintf(w, "  client heap per held lock: %.0f bytes; release of all: %.1fs; leases lost: %d\n",
				h.HeapBytesPerLock, h.ReleaseSeconds, h.LeasesLost)
		}
		if c := r.Scale.Clients; c != nil {
			listen := "off (waiters would poll)"
			if c.Listeners {
				listen = "on"
			}
			fmt.Fprintf(w, "scale: %s Clients, one lock each, TTL %s, for %s on a pool of %d (listeners %s)\n",
				thousands(float64(c.Clients)), secs(c.TTLSeconds), secs(c.DurationSeconds), c.Pool, listen)
			fmt.Fprintf(w, "  leases lost: %d, locks lost: %d; renewals/s %.1f (expected %.1f); renewal p50/p99/max %.2f/%.2f/%.2f ms\n",
				c.LeasesLost, c.LocksLost, c.RenewalsPerSecond, c.ExpectedRenewalsPerSecond, c.RenewalP50Ms, c.RenewalP99Ms, c.RenewalMaxMs)
			fmt.Fprintf(w, "  setup %.1fs, close %.1fs, db cpu %s s\n", c.SetupSeconds, c.CloseSeconds, optf(c.DBCPUSeconds, 1, 2))
		}
	}
	if r.Coordination != nil {
		if len(r.Rows) > 0 || r.Scale != nil {
			fmt.Fprintln(w)
		}
		r.Coordination.write(w)
	}
	return nil
}

// write writes the coordination section of the table report.
func (c *Coordination) write(w io.Writer) {
	fmt.Fprintln(w, "coordination:")
	if x := c.Watch; x != nil {
		how := x.Wakeup
		if how == "polling" {
			how = "polling every " + secs(x.WatchIntervalSeconds)
		} else {
			how += ", polling every " + secs(x.WatchIntervalSeconds) + " as a fallback"
		}
		fmt.Fprintf(w, "  watch (%s; %d member Clients, %.0f changes/s for %s), from the call's return to the event:\n",
			how, x.MemberClients, x.OpsPerSecond, secs(x.DurationSeconds))
		fmt.Fprintf(w, "    Join  -> MemberJoined p50/p99/max %.1f/%.1f/%.1f ms (%d)\n", x.JoinP50Ms, x.JoinP99Ms, x.JoinMaxMs, x.Joins)
		fmt.Fprintf(w, "    Leave -> MemberLeft   p50/p99/max %.1f/%.1f/%.1f ms (%d)\n", x.LeaveP50Ms, x.LeaveP99Ms, x.LeaveMaxMs, x.Leaves)
		if x.Missed > 0 || x.Resyncs > 0 || x.Errors > 0 {
			fmt.Fprintf(w, "    missed: %d, resyncs: %d, failed joins: %d %s\n", x.Missed, x.Resyncs, x.Errors, x.LastError)
		}
	}
	if x := c.Failover; x != nil {
		rounds := make([]string, len(x.Seconds))
		for i, s := range x.Seconds {
			rounds[i] = fmt.Sprintf("%.2f", s)
		}
		fmt.Fprintf(w, "  leader failover, SIGKILL to a waiting standby's election (TTL %s, %d rounds): min/median/max %.2f/%.2f/%.2f s (%s)\n",
			secs(x.TTLSeconds), x.Rounds, x.MinSeconds, x.MedianSeconds, x.MaxSeconds, strings.Join(rounds, ", "))
	}
	if x := c.Semaphore; x != nil {
		fmt.Fprintf(w, "  semaphore, limit %d, %d workers on %d Clients: %s acquire+release pairs/s, p50/p99 %.2f/%.2f ms, wait p99 %.2f ms, %.2f statements/pair\n",
			x.Limit, x.Workers, x.Clients, thousands(x.PairsPerSecond), x.P50Ms, x.P99Ms, x.WaitP99Ms, x.StatementsPerPair)
		if x.Errors > 0 {
			fmt.Fprintf(w, "    (%d failed calls were retried, the last: %s)\n", x.Errors, x.LastError)
		}
	}
	if x := c.WriteLoad; x != nil {
		fmt.Fprintf(w, "  write load, %s Clients (TTL %s, renewal every %s, reapers off), %s quiet windows:\n",
			thousands(float64(x.Clients)), secs(x.TTLSeconds), roundSecs(x.RenewIntervalSeconds), secs(x.WindowSeconds))
		none, with := "no member:", thousands(float64(x.Members))+" members:"
		width := max(len(none), len(with))
		fmt.Fprintf(w, "    %-*s %.2f statements/s, %.2f renewals per Client per period, %.2f statements per renewal\n",
			width, none, x.StatementsPerSecondNone, x.RenewalsPerClientPeriodNone, x.StatementsPerRenewalNone)
		fmt.Fprintf(w, "    %-*s %.2f statements/s, %.2f renewals per Client per period, %.2f statements per renewal\n",
			width, with, x.StatementsPerSecondMembers, x.RenewalsPerClientPeriodMembers, x.StatementsPerRenewalMembers)
		fmt.Fprintf(w, "    expected %.2f statements/s (one renewal per Client per period); joining the members took %.1fs; leases lost: %d, members lost: %d\n",
			x.ExpectedStatementsPerSecond, x.JoinSeconds, x.LeasesLost, x.MembersLost)
	}
}

// writeColumns writes t as columns two spaces apart: the first left
// columns aligned left, the others right.
func writeColumns(w io.Writer, t [][]string, left int) error {
	var width []int
	for _, row := range t {
		for i, cell := range row {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], utf8.RuneCountInString(cell))
		}
	}
	for _, row := range t {
		var b strings.Builder
		for i, cell := range row {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(cell))
			if i > 0 {
				b.WriteString("  ")
			}
			if i < left {
				b.WriteString(cell + pad)
			} else {
				b.WriteString(pad + cell)
			}
		}
		if _, err := fmt.Fprintln(w, strings.TrimRight(b.String(), " ")); err != nil {
			return err
		}
	}
	return nil
}

func secs(s float64) string { return time.Duration(s * float64(time.Second)).String() }

// roundSecs is secs rounded to the millisecond.
func roundSecs(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Millisecond).String()
}

// optf formats *v × scale with prec decimals, or "n/a".
func optf(v *float64, scale float64, prec int) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.*f", prec, *v*scale)
}

// thousands formats x rounded, with thousands separators.
func thousands(x float64) string {
	s := fmt.Sprintf("%.0f", x)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
