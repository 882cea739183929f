// Package testhook lets sqldlm's own tests observe the library's internal
// state without a public API: the randomized fault test (internal/jepsen)
// records, for every lease that ends, the local deadline the client trusted
// it until. The library only calls the hooks; only tests set them.
package testhook

import (
	"sync/atomic"
	"time"
)

// LeaseEnd describes a lease as it ended.
type LeaseEnd struct {
	LeaseID int64
	// Deadline is the local trust deadline (monotonic): the time at which
	// the client would have declared the lease lost without a renewal.
	Deadline time.Time
	Err      error // why it ended: sqldlm.ErrLost or sqldlm.ErrClosed
}

var leaseEnded atomic.Pointer[func(LeaseEnd)]

// SetLeaseEnded makes f be called (synchronously, once per lease) when a
// lease ends; nil removes it.
func SetLeaseEnded(f func(LeaseEnd)) {
	if f == nil {
		leaseEnded.Store(nil)
		return
	}
	leaseEnded.Store(&f)
}

// LeaseEnded reports e to the hook, if one is set.
func LeaseEnded(e LeaseEnd) {
	if f := leaseEnded.Load(); f != nil {
		(*f)(e)
	}
}

// LeaseOf returns the id of the lease a *sqldlm.Lock belongs to (set by
// package sqldlm at init).
var LeaseOf func(lock any) int64
