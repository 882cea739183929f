//go:build sqldlm_mutant

package sqldlm

import (
	"cmp"
	"os"
	"strings"
)

// A deliberately broken library, built only with -tags sqldlm_mutant by the
// randomized fault test's self-check (see nomutant.go). SQLDLM_MUTANT picks
// the bugs, comma-separated (default "fence-unchecked,late-deadline"):
//
//   - fence-unchecked: Fence checks nothing in the database;
//   - late-deadline: the client trusts its lease for a second longer than
//     the database keeps it;
//   - election-shared: Campaign takes the election's lock in shared mode,
//     so that campaigners are elected together;
//   - semaphore-extra-slot: a semaphore picks among one slot more than its
//     limit, so that one permit more than the limit can be held.
var (
	mutantFenceUnchecked     bool
	mutantLateDeadline       bool
	mutantElectionShared     bool
	mutantSemaphoreExtraSlot bool
)

func init() {
	if os.Getenv("SQLDLM_ALLOW_MUTANT") != "1" {
		panic("sqldlm: built with the sqldlm_mutant tag, which breaks fencing and lease expiry on purpose (for tests only); set SQLDLM_ALLOW_MUTANT=1 to run it")
	}
	for _, bug := range strings.Split(cmp.Or(os.Getenv("SQLDLM_MUTANT"), "fence-unchecked,late-deadline"), ",") {
		switch bug {
		case "fence-unchecked":
			mutantFenceUnchecked = true
		case "late-deadline":
			mutantLateDeadline = true
		case "election-shared":
			mutantElectionShared = true
		case "semaphore-extra-slot":
			mutantSemaphoreExtraSlot = true
		default:
			panic("sqldlm: SQLDLM_MUTANT: unknown bug " + bug)
		}
	}
}
