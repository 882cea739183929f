//go:build !sqldlm_mutant

package sqldlm

// Every normal build: the library as designed. The sqldlm_mutant build tag
// (mutant.go) breaks safety mechanisms on purpose, those SQLDLM_MUTANT
// names, to prove that the randomized fault test in integration_test sees
// the bugs it is meant to catch. The constants are read only in knobs.go,
// with the other test seams.
const (
	// mutantFenceUnchecked makes Fence check nothing: neither the lock's
	// local state nor, in the database, that it is still held by a live
	// lease.
	mutantFenceUnchecked = false
	// mutantLateDeadline makes the local trust deadline TTL + 1s after a
	// renewal was sent, instead of TTL minus the safety margin.
	mutantLateDeadline = false
	// mutantElectionShared makes Campaign take the election's lock in
	// shared mode: campaigners are elected together.
	mutantElectionShared = false
	// mutantSemaphoreExtraSlot makes a semaphore pick among limit + 1
	// slots: one permit more than the limit can be held.
	mutantSemaphoreExtraSlot = false
)
