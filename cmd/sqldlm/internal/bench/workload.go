package bench

import (
	"fmt"
	"slices"
	"strings"
)

// A Workload is what every worker of a cell does in a loop: acquire a lock
// and release it at once (an acquire+release pair).
type Workload struct {
	// Hot: every worker locks the same name. Otherwise each worker has a
	// name of its own, so nothing is contended.
	Hot bool
	// Shared: the lock is taken in shared mode (sqldlm.Shared,
	// pg_advisory_lock_shared); otherwise exclusive.
	Shared bool
}

// Workloads lists every workload, in report order.
var Workloads = []Workload{
	{Hot: false, Shared: false},
	{Hot: false, Shared: true},
	{Hot: true, Shared: false},
	{Hot: true, Shared: true},
}

// Name is the workload's name in reports and in --workloads:
// distinct-exclusive, distinct-shared, hot-exclusive, hot-shared.
func (w Workload) Name() string { return w.Names() + "-" + w.Mode() }

// Names is "hot" or "distinct".
func (w Workload) Names() string {
	if w.Hot {
		return "hot"
	}
	return "distinct"
}

// Mode is "shared" or "exclusive".
func (w Workload) Mode() string {
	if w.Shared {
		return "shared"
	}
	return "exclusive"
}

// ParseWorkloads selects workloads by a comma-separated filter. Each item
// is a workload's name or one part of it: "hot" selects hot-exclusive and
// hot-shared, "exclusive" both exclusive workloads, "hot-shared" just that
// one. An empty filter selects all.
func ParseWorkloads(filter string) ([]Workload, error) {
	if strings.TrimSpace(filter) == "" {
		return slices.Clone(Workloads), nil
	}
	var out []Workload
	for _, item := range strings.Split(filter, ",") {
		item = strings.ToLower(strings.TrimSpace(item))
		if item == "" {
			continue
		}
		found := false
		for _, w := range Workloads {
			if item == w.Name() || item == w.Names() || item == w.Mode() {
				found = true
				if !slices.Contains(out, w) {
					out = append(out, w)
				}
			}
		}
		if !found {
			names := make([]string, len(Workloads))
			for i, w := range Workloads {
				names[i] = w.Name()
			}
			return nil, fmt.Errorf("unknown workload %q: use %s, or hot, distinct, exclusive, shared", item, strings.Join(names, ", "))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no workload selected by %q", filter)
	}
	// Keep report order whatever the filter's order.
	slices.SortFunc(out, func(a, b Workload) int { return slices.Index(Workloads, a) - slices.Index(Workloads, b) })
	return out, nil
}

// Implementations measured, in report order.
const (
	ImplSqldlm    = "sqldlm"     // Client.Lock + Lock.Release
	ImplTwoCommit = "two-commit" // autocommit INSERT of a lock row, then DELETE; waiters poll
	ImplAdvisory  = "advisory"   // the dialect's session lock: pg_advisory_lock, GET_LOCK
)

// Impls lists the implementations in report order.
var Impls = []string{ImplSqldlm, ImplTwoCommit, ImplAdvisory}
