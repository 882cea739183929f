package sqldlm

import (
	"time"

	"github.com/sqldlm/sqldlm/internal/testknobs"
)

// The library's test seams, in one place; none changes what a normal build
// does.
//
//   - Per client: a client whose Config.Hooks carries *testknobs.Knobs
//     (only sqldlm's own tests can make one: the package is internal) tells
//     them of every lease of its as it ends, and lets them read the lease a
//     handle belongs to.
//   - Per build: the sqldlm_mutant build tag (mutant.go, nomutant.go) breaks
//     safety mechanisms on purpose, for the randomized fault test's
//     self-check. Its switches are read only here.

// knobsOf returns the knobs hooks carries, with LeaseOf and LockOf filled
// in, or nil.
func knobsOf(hooks Hooks) *testknobs.Knobs {
	carrier, ok := hooks.(testknobs.Carrier)
	if !ok {
		return nil
	}
	k := carrier.Knobs()
	k.LeaseOf = func(h any) int64 {
		switch h := h.(type) {
		case *Leadership:
			return h.l.lease.id
		case *Permit:
			return h.l.lease.id
		case *Membership:
			return h.l.id
		}
		return h.(*Lock).lease.id
	}
	k.LockOf = func(h any) any {
		if ld, ok := h.(*Leadership); ok {
			return ld.l
		}
		return h.(*Permit).l
	}
	return k
}

// leaseEnded tells the client's knobs, if any, that lease id ended with
// err, having been trusted until deadline.
func (c *Client) leaseEnded(id int64, deadline time.Time, err error) {
	if k := c.knobs; k != nil && k.LeaseEnded != nil {
		k.LeaseEnded(testknobs.LeaseEnd{LeaseID: id, Deadline: deadline, Err: err})
	}
}

// fenceUnchecked reports whether Fence is to check nothing, neither the
// lock's local state nor the database: in builds with the sqldlm_mutant
// tag only.
func fenceUnchecked() bool { return mutantFenceUnchecked }

// mutantMargin returns margin, the lease's safety margin, except in builds
// with the sqldlm_mutant tag: there it is -1s, a local trust deadline a
// second after the server's expiry.
func mutantMargin(margin time.Duration) time.Duration {
	if mutantLateDeadline {
		return -time.Second
	}
	return margin
}

// electionMode returns the mode Campaign takes an election's lock in:
// Exclusive, except in builds with the sqldlm_mutant tag and its
// election-shared bug.
func electionMode() Mode {
	if mutantElectionShared {
		return Shared
	}
	return Exclusive
}

// semaphoreSlots returns how many slots a semaphore of limit picks among:
// limit, except in builds with the sqldlm_mutant tag and its
// semaphore-extra-slot bug (limit + 1).
func semaphoreSlots(limit int) int {
	if mutantSemaphoreExtraSlot {
		return limit + 1
	}
	return limit
}
