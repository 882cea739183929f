package postgres_test

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// TestEnqueueNeverMissesARemoval: a request is never left queued where no
// release will wake it. Each operation that removes what keeps a request
// out (a release with and without handover, the holder's lease deleted, a
// downgrade) races with the request's enqueue, in both orders:
//
//   - RemovalFirst: the enqueue has made its decision from plain reads and
//     is held up (on its own lease's row) while the removal commits. It
//     must not queue: nothing would wake it.
//   - EnqueueFirst: the enqueue is held up just before it inserts its
//     waiter row (by another transaction's uncommitted row with the same
//     key) while the removal runs. The removal must wait for the enqueue
//     and then wake the queued request.
//
// Until schema version 7 both orders left the request queued at a name
// that let it in, for as long as its poll interval (up to 2 s). Each case
// runs with the holder's hold as a row of sqldlm_holders and, where the
// holder's grant is uncontended, kept in the name's row (Inline, schema
// version 13).
func TestEnqueueNeverMissesARemoval(t *testing.T) {
	t.Parallel()
	type removal struct {
		mode dialect.Mode // the request's mode
		// upgrade: the request upgrades a shared hold of its own, beside
		// the holder's shared hold (it is queued by phase 2, which decides
		// after its locks: only the EnqueueFirst order applies).
		upgrade bool
		// remove removes the hold of lease o on name (granted with token).
		remove func(f *fixture, db *sql.DB, name string, o, token int64) error
	}
	removals := map[string]removal{
		"Release": {dialect.Exclusive, false, func(f *fixture, db *sql.DB, name string, o, token int64) error {
			_, err := f.d.Release(f.ctx, db, &dialect.HoldRef{Name: name, LeaseID: o, Token: token})
			return err
		}},
		"ReleaseHandOver": {dialect.Exclusive, false, func(f *fixture, db *sql.DB, name string, o, token int64) error {
			_, err := f.d.(dialect.Notifier).ReleaseHandOver(f.ctx, db, &dialect.HoldRef{Name: name, LeaseID: o, Token: token})
			return err
		}},
		"DeleteLease": {dialect.Exclusive, false, func(f *fixture, db *sql.DB, name string, o, token int64) error {
			_, err := f.d.DeleteLease(f.ctx, db, o)
			return err
		}},
		"Downgrade": {dialect.Shared, false, func(f *fixture, db *sql.DB, name string, o, token int64) error {
			_, err := f.d.Downgrade(f.ctx, db, &dialect.HoldRef{Name: name, LeaseID: o, Token: token})
			return err
		}},
		"UpgradeBehindRelease": {dialect.Exclusive, true, func(f *fixture, db *sql.DB, name string, o, token int64) error {
			_, err := f.d.Release(f.ctx, db, &dialect.HoldRef{Name: name, LeaseID: o, Token: token})
			return err
		}},
	}
	for rname, rm := range removals {
		for _, inline := range []bool{false, true} {
			if inline && rm.upgrade {
				continue // the holder's shared hold is not alone
			}
			kind := "Row"
			if inline {
				kind = "Inline"
			}
			holderGrant := func(f *fixture, name string, o int64, mode dialect.Mode) int64 {
				if inline {
					f.row(name)
				}
				token := f.grant(name, o, mode)
				lease, _ := f.inline(name)
				require.Equal(f.t, inline, lease == o, "the holder's hold is inline: %v", inline)
				return token
			}
			if !rm.upgrade {
				t.Run(rname+"/"+kind+"/RemovalFirst", func(t *testing.T) {
					t.Parallel()
					f := newFixture(t)
					const name = "n"
					o := f.lease("holder", time.Minute)
					token := holderGrant(f, name, o, dialect.Exclusive)
					w := f.lease("waiter", time.Minute)
					p := dialect.AcquireParams{Name: name, LeaseID: w, RequestID: rand.Int64(), Mode: rm.mode, Enqueue: true}

					// Hold up the enqueue after its plain reads: its first lock on
					// the own lease waits for this transaction.
					pin := f.begin(f.reopen(), sql.LevelReadCommitted)
					_, err := pin.ExecContext(f.ctx, `SELECT 1 FROM sqldlm_leases WHERE id = $1 FOR UPDATE`, w)
					require.NoError(t, err)

					acquired := f.heldUpAcquire(p, "the enqueue did not wait for its own lease's row")

					require.NoError(t, rm.remove(f, f.db.DB, name, o, token))
					require.NoError(t, pin.Commit())
					res := <-acquired
					require.NotNil(t, res)
					require.Equal(t, dialect.Blocked, res.Status, "the enqueue decided before the removal")
					require.Zero(t, f.requestRows(w, p.RequestID),
						"the request was queued after the removal committed, where nothing will wake it")
					require.Equal(t, dialect.Granted, f.acquire(p).Status, "asked again, the request is let in")
				})
			}

			t.Run(rname+"/"+kind+"/EnqueueFirst", func(t *testing.T) {
				t.Parallel()
				f := newFixture(t)
				const name = "n"
				o := f.lease("holder", time.Minute)
				w := f.lease("waiter", time.Minute)
				p := dialect.AcquireParams{Name: name, LeaseID: w, RequestID: rand.Int64(), Mode: rm.mode, Enqueue: true}
				holderMode := dialect.Exclusive
				if rm.upgrade {
					holderMode = dialect.Shared
				}
				token := holderGrant(f, name, o, holderMode)
				if rm.upgrade {
					p.UpgradeToken = f.grant(name, w, dialect.Shared)
				}

				wakes := make(chan dialect.Wakeup, 16)
				lctx, stop := context.WithCancel(f.ctx)
				ready := make(chan struct{})
				listening := make(chan error, 1)
				go func() {
					listening <- f.d.(dialect.Notifier).Listen(lctx, f.reopen(), func() { close(ready) }, func(v dialect.Wakeup) { wakes <- v })
				}()
				t.Cleanup(func() { stop(); <-listening })
				select {
				case <-ready:
				case err := <-listening:
					t.Fatalf("listen: %v", err)
				}

				// Hold up the enqueue just before its waiter row: an
				// uncommitted row with the same key makes its INSERT wait.
				pin := f.begin(f.reopen(), sql.LevelReadCommitted)
				_, err := pin.ExecContext(f.ctx, `INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, since, payload)
				VALUES ($1, $2, $3, 'X', clock_timestamp(), '')`, "elsewhere", w, p.RequestID)
				require.NoError(t, err)

				acquired := f.heldUpAcquire(p, "the enqueue did not wait for the pinned waiter key")

				rmDB, rmPid := f.onePool()
				var rmDone atomic.Bool
				removed := make(chan error, 1)
				go func() {
					err := rm.remove(f, rmDB, name, o, token)
					rmDone.Store(true)
					removed <- err
				}()
				f.waitingOrDone(rmPid, &rmDone, "the removal")
				require.False(t, rmDone.Load(), "the removal did not wait for the enqueue in progress: it cannot see the waiter it must wake")

				require.NoError(t, pin.Rollback())
				res := <-acquired
				require.NotNil(t, res)
				require.Equal(t, dialect.Blocked, res.Status)
				require.NoError(t, <-removed)
				// The removal saw the queued request: it woke it, or handed
				// the name over to it.
				deadline := time.After(10 * time.Second)
				for {
					select {
					case v := <-wakes:
						if v.Name == name && v.RequestID == p.RequestID {
							require.Equal(t, dialect.Granted, f.acquire(p).Status)
							return
						}
					case <-deadline:
						t.Fatal("the queued request was never woken")
					}
				}
			})
		}
	}
}

// heldUpAcquire runs Acquire(p) on a connection of its own and returns
// once the statement waits for a row lock; the result arrives on the
// channel (nil after an error, which fails the test).
func (f *fixture) heldUpAcquire(p dialect.AcquireParams, notWaiting string) <-chan *dialect.AcquireResult {
	f.t.Helper()
	db, pid := f.onePool()
	var done atomic.Bool
	acquired := make(chan *dialect.AcquireResult, 1)
	go func() {
		res, err := f.d.Acquire(f.ctx, db, &p)
		done.Store(true)
		if !assertNoError(f.t, err) {
			res = nil
		}
		acquired <- res
	}()
	f.waitingOrDone(pid, &done, "the enqueue")
	require.False(f.t, done.Load(), notWaiting)
	return acquired
}

// assertNoError reports err to t from any goroutine and whether it was nil.
func assertNoError(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Errorf("unexpected error: %v", err)
		return false
	}
	return true
}
