// Package sqldlmprom exports a sqldlm client's events as Prometheus metrics.
// It is a package of its own so that only programs that import it link
// github.com/prometheus/client_golang.
//
//	m := sqldlmprom.New(sqldlmprom.Options{})
//	prometheus.MustRegister(m)
//	c, err := sqldlm.New(db, sqldlm.Config{Hooks: m})
//
// Metrics (namespace "sqldlm" unless Options.Namespace says otherwise):
//
//	sqldlm_acquire_wait_seconds{mode,outcome}  histogram: time from Lock/TryLock/Upgrade to grant or failure
//	sqldlm_grants_total{mode}                  counter: locks granted
//	sqldlm_acquire_failures_total{mode,reason} counter: locked, canceled, closed, error
//	sqldlm_releases_total{mode}                counter: locks released
//	sqldlm_takeovers_total{mode}               counter: grants that took over from dead holders
//	sqldlm_lost_locks_total{mode}              counter: locks lost without release
//	sqldlm_locks_held{mode}                    gauge: locks held now
//	sqldlm_lease_renewal_seconds               histogram: heartbeat round trips
//	sqldlm_leases_lost_total                   counter: leases lost
//	sqldlm_reaped_total{what}                  counter: leases, holds, waiters, idle_locks deleted by the reaper
//	sqldlm_member_joins_total                  counter: group memberships joined
//	sqldlm_member_leaves_total{reason}         counter: memberships ended: left, lost, closed
//	sqldlm_memberships                         gauge: memberships held now
//	sqldlm_elections_won_total                 counter: leaderships won (Campaign, Lead)
//
// Lock names, groups and elections are not labels: they are unbounded.
package sqldlmprom

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sqldlm/sqldlm"
)

// Options configures the metrics.
type Options struct {
	// Namespace prefixes every metric name. Defaults to "sqldlm".
	Namespace string
	// ConstLabels are added to every metric (for example the service).
	ConstLabels prometheus.Labels
}

// Metrics implements sqldlm.Hooks and prometheus.Collector. Register it,
// then pass it as sqldlm.Config.Hooks. It is safe for concurrent use and
// never blocks.
type Metrics struct {
	wait      *prometheus.HistogramVec
	grants    *prometheus.CounterVec
	failures  *prometheus.CounterVec
	releases  *prometheus.CounterVec
	takeovers *prometheus.CounterVec
	lost      *prometheus.CounterVec
	held      *prometheus.GaugeVec
	renewal   prometheus.Histogram
	leaseLost prometheus.Counter
	reaped    *prometheus.CounterVec
	joins     prometheus.Counter
	leaves    *prometheus.CounterVec
	members   prometheus.Gauge
	elected   prometheus.Counter
}

var _ sqldlm.Hooks = (*Metrics)(nil)
var _ prometheus.Collector = (*Metrics)(nil)

// New returns the metrics, not yet registered.
func New(o Options) *Metrics {
	ns := o.Namespace
	if ns == "" {
		ns = "sqldlm"
	}
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: ns, Name: name, Help: help, ConstLabels: o.ConstLabels}
	}
	hist := func(name, help string, buckets []float64) prometheus.HistogramOpts {
		return prometheus.HistogramOpts{Namespace: ns, Name: name, Help: help, ConstLabels: o.ConstLabels, Buckets: buckets}
	}
	return &Metrics{
		wait: prometheus.NewHistogramVec(hist("acquire_wait_seconds", "Time from a Lock, TryLock or Upgrade call to its grant or failure.",
			prometheus.ExponentialBuckets(0.0005, 4, 10)), []string{"mode", "outcome"}),
		grants:   prometheus.NewCounterVec(prometheus.CounterOpts(opts("grants_total", "Locks granted.")), []string{"mode"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts(opts("acquire_failures_total", "Lock calls that ended without the lock.")), []string{"mode", "reason"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts(opts("releases_total", "Locks released.")), []string{"mode"}),
		takeovers: prometheus.NewCounterVec(prometheus.CounterOpts(opts("takeovers_total",
			"Grants that took a lock over from holders whose leases had died without releasing.")), []string{"mode"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts(opts("lost_locks_total", "Locks lost without being released.")), []string{"mode"}),
		held: prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("locks_held", "Locks held now.")), []string{"mode"}),
		renewal: prometheus.NewHistogram(hist("lease_renewal_seconds", "Round trip of successful lease renewals.",
			prometheus.ExponentialBuckets(0.0005, 3, 10))),
		leaseLost: prometheus.NewCounter(prometheus.CounterOpts(opts("leases_lost_total", "Client leases lost (every lock on them was lost)."))),
		reaped:    prometheus.NewCounterVec(prometheus.CounterOpts(opts("reaped_total", "Rows deleted by the reaper.")), []string{"what"}),
		joins:     prometheus.NewCounter(prometheus.CounterOpts(opts("member_joins_total", "Group memberships joined."))),
		leaves: prometheus.NewCounterVec(prometheus.CounterOpts(opts("member_leaves_total",
			"Group memberships ended: left (Leave), lost (the lease was lost), closed (Client.Close).")), []string{"reason"}),
		members: prometheus.NewGauge(prometheus.GaugeOpts(opts("memberships", "Group memberships held now."))),
		elected: prometheus.NewCounter(prometheus.CounterOpts(opts("elections_won_total", "Leaderships won (Campaign, Lead)."))),
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.wait, m.grants, m.failures, m.releases, m.takeovers, m.lost, m.held, m.renewal, m.leaseLost, m.reaped,
		m.joins, m.leaves, m.members, m.elected}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *Metrics) AcquireStarted(string, sqldlm.Mode) {}

func (m *Metrics) AcquireGranted(_ string, mode sqldlm.Mode, waited time.Duration) {
	m.wait.WithLabelValues(mode.String(), "granted").Observe(waited.Seconds())
	m.grants.WithLabelValues(mode.String()).Inc()
	m.held.WithLabelValues(mode.String()).Inc()
}

func (m *Metrics) AcquireFailed(_ string, mode sqldlm.Mode, waited time.Duration, err error) {
	reason := "error"
	switch {
	// A Lock whose ctx ended while the name was held matches both (a
	// *sqldlm.WaitError): it is a give-up, counted as such.
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		reason = "canceled"
	case errors.Is(err, sqldlm.ErrLocked):
		reason = "locked"
	case errors.Is(err, sqldlm.ErrClosed):
		reason = "closed"
	}
	m.wait.WithLabelValues(mode.String(), "failed").Observe(waited.Seconds())
	m.failures.WithLabelValues(mode.String(), reason).Inc()
}

func (m *Metrics) TookOver(_ string, mode sqldlm.Mode, _ int) {
	m.takeovers.WithLabelValues(mode.String()).Inc()
}

func (m *Metrics) Released(_ string, mode sqldlm.Mode, _ time.Duration) {
	m.releases.WithLabelValues(mode.String()).Inc()
	m.held.WithLabelValues(mode.String()).Dec()
}

func (m *Metrics) LockLost(_ string, mode sqldlm.Mode, _ time.Duration) {
	m.lost.WithLabelValues(mode.String()).Inc()
	m.held.WithLabelValues(mode.String()).Dec()
}

func (m *Metrics) LeaseRenewed(latency time.Duration) { m.renewal.Observe(latency.Seconds()) }

func (m *Metrics) LeaseLost(int) { m.leaseLost.Inc() }

func (m *Metrics) ReaperPass(leases, holds, waiters, idleLocks int) {
	m.reaped.WithLabelValues("leases").Add(float64(leases))
	m.reaped.WithLabelValues("holds").Add(float64(holds))
	m.reaped.WithLabelValues("waiters").Add(float64(waiters))
	m.reaped.WithLabelValues("idle_locks").Add(float64(idleLocks))
}

func (m *Metrics) MemberJoined(string) {
	m.joins.Inc()
	m.members.Inc()
}

func (m *Metrics) MemberLeft(_ string, err error) {
	reason := "left"
	switch {
	case errors.Is(err, sqldlm.ErrLost):
		reason = "lost"
	case errors.Is(err, sqldlm.ErrClosed):
		reason = "closed"
	}
	m.leaves.WithLabelValues(reason).Inc()
	m.members.Dec()
}

func (m *Metrics) Elected(string, int64) { m.elected.Inc() }

// Collector returns the child metric of the named family (without the
// namespace, e.g. "grants_total") for the label values given, for tests and
// for custom exporters. It panics for an unknown name or label count.
func (m *Metrics) Collector(name string, labels ...string) prometheus.Collector {
	switch name {
	case "grants_total":
		return m.grants.WithLabelValues(labels...)
	case "acquire_failures_total":
		return m.failures.WithLabelValues(labels...)
	case "releases_total":
		return m.releases.WithLabelValues(labels...)
	case "takeovers_total":
		return m.takeovers.WithLabelValues(labels...)
	case "lost_locks_total":
		return m.lost.WithLabelValues(labels...)
	case "locks_held":
		return m.held.WithLabelValues(labels...)
	case "leases_lost_total":
		return m.leaseLost
	case "reaped_total":
		return m.reaped.WithLabelValues(labels...)
	case "member_joins_total":
		return m.joins
	case "member_leaves_total":
		return m.leaves.WithLabelValues(labels...)
	case "memberships":
		return m.members
	case "elections_won_total":
		return m.elected
	}
	panic("sqldlmprom: unknown metric " + name)
}
