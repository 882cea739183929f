package jepsen

import (
	"fmt"
	"time"
)

// CheckHolderKnowsFirst checks sqldlm's invariant 5 (the holder knows
// first; it holds without server clock faults): for every hold that ended
// without its holder releasing it (the audit log's takeover and expire
// rows: a grant or the reaper deleted the hold of a dead lease), the next
// grant of the name that conflicts with it must not have returned before
// the holder knew its lease was gone. The holder knew at the earlier of
// its local trust deadline and the moment its client ended the lease
// (LeaseEnd events), or when its process was killed (Killed events).
//
// Leaderships and permits are holds of exclusive locks (the election's,
// the permit's slot), in the audit log like any other: a deposed leader
// must know before the next leader is elected, and the holder of a lost
// permit before its slot is granted again.
//
// It returns the violations and how many such handovers it checked (those
// whose next grant the history acknowledged).
func CheckHolderKnowsFirst(events []Event, ops []Op, audit []AuditRow) ([]string, Handovers) {
	knew := map[int64]int64{} // lease -> when its holder knew it was gone
	killed := map[int]int64{}
	for _, e := range events {
		switch e.T {
		case LeaseEnd:
			k := e.Mono
			if e.Deadline != 0 && e.Deadline < k {
				k = e.Deadline
			}
			if old, ok := knew[e.Lease]; !ok || k < old {
				knew[e.Lease] = k
			}
		case Killed:
			killed[e.P] = e.Mono
		}
	}
	leaseProc := map[int64]int{}
	type nameToken struct {
		name  string
		token int64
	}
	acked := map[nameToken]Op{}
	for _, o := range ops {
		if o.Lease != 0 {
			leaseProc[o.Lease] = o.P
		}
		if o.Status == OK && o.NewToken != 0 {
			acked[nameToken{o.Name, o.NewToken}] = o
		}
	}
	// A lease that no recorded operation names (the process was killed
	// with its only operation under that lease in flight) is the process's
	// whose owner the database recorded with it.
	for _, a := range audit {
		if _, ok := leaseProc[a.Lease]; !ok && a.P != 0 {
			leaseProc[a.Lease] = a.P
		}
	}
	var v []string
	var n Handovers
	for i, dead := range audit {
		if dead.Event != "takeover" && dead.Event != "expire" {
			continue
		}
		// The next conflicting grant of the name.
		var next *AuditRow
		for j := i + 1; j < len(audit); j++ {
			a := audit[j]
			if a.Name == dead.Name && a.granted() && (a.Event == "upgrade" || a.Mode == Exclusive || dead.Mode == Exclusive) {
				next = &audit[j]
				break
			}
		}
		if next == nil {
			continue
		}
		b, ok := acked[nameToken{next.Name, next.Token}]
		if !ok {
			continue // its outcome is unknown to the history
		}
		n.add(b.Coord)
		k, ok := knew[dead.Lease]
		if !ok {
			p, known := leaseProc[dead.Lease]
			kill, wasKilled := killed[p]
			if !known || !wasKilled {
				who := "a process unknown to the history"
				if known {
					who = fmt.Sprintf("p%d, not killed", p)
				}
				v = append(v, fmt.Sprintf("holder knows first %q: grant %d (p%d) followed the %s of lease %d's hold %d, whose holder (%s) never learned the lease ended",
					dead.Name, next.Token, b.P, dead.Event, dead.Lease, dead.Token, who))
				continue
			}
			k = kill
		}
		if k > b.Return {
			v = append(v, fmt.Sprintf("holder knows first %q: grant %d (p%d) returned %s before the holder of lease %d (token %d, %s) knew the lease was gone",
				dead.Name, next.Token, b.P, time.Duration(k-b.Return), dead.Lease, dead.Token, dead.Event))
		}
	}
	return v, n
}

// Handovers counts the handovers CheckHolderKnowsFirst checked, by what was
// handed over.
type Handovers struct {
	Locks       int
	Leaderships int // elections
	Permits     int // semaphore slots
}

func (n *Handovers) add(coord string) {
	switch coord {
	case Election:
		n.Leaderships++
	case Semaphore:
		n.Permits++
	default:
		n.Locks++
	}
}

// Total returns the number of handovers checked.
func (n Handovers) Total() int { return n.Locks + n.Leaderships + n.Permits }
