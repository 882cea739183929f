package jepsen

import (
	"fmt"
	"time"
)

// CheckHolderKnowsFirst checks, for every grant that took a name over from
// a holder whose lease died without releasing it (Op.TookLease), that the
// holder knew its lease was gone no later than the grant returned: the
// earlier of its local trust deadline and the moment the client ended the
// lease (LeaseEnd events), or the moment its process was killed (Killed
// events). Without server clock faults this is sqldlm's invariant 5.
//
// It returns the violations and how many takeovers it checked.
func CheckHolderKnowsFirst(events []Event, ops []Op) ([]string, int) {
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
	for _, o := range ops {
		if o.Lease != 0 {
			leaseProc[o.Lease] = o.P
		}
	}
	var v []string
	n := 0
	for _, o := range ops {
		if o.Status != OK || o.TookLease == 0 {
			continue
		}
		n++
		k, ok := knew[o.TookLease]
		if !ok {
			p, known := leaseProc[o.TookLease]
			kill, wasKilled := killed[p]
			if !known || !wasKilled {
				v = append(v, fmt.Sprintf("holder knows first %q: p%d's grant %d took over lease %d (token %d), whose holder never learned it ended",
					o.Name, o.P, o.NewToken, o.TookLease, o.TookToken))
				continue
			}
			k = kill
		}
		if k > o.Return {
			v = append(v, fmt.Sprintf("holder knows first %q: p%d's grant %d took over lease %d (token %d) %s before its holder knew the lease was gone",
				o.Name, o.P, o.NewToken, o.TookLease, o.TookToken, time.Duration(k-o.Return)))
		}
	}
	return v, n
}
