package postgres_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Break wakes the waiters at the head of the queue of every name the broken
// lease held or waited for (a broken lease loses them all), and a Break
// that breaks nothing wakes nobody.
func TestBreakNotifiesTheNamesOfTheBrokenLeases(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	l := listen(t, testdb.Reopen(t, db.Kind, db.DSN).DB)

	lease := func(owner string) int64 {
		id := rand.Int64()
		require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: id, Owner: owner, TTL: time.Minute}))
		return id
	}
	acquire := func(name string, lease int64, mode dialect.Mode, want dialect.AcquireStatus) int64 {
		res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: rand.Int64(), Mode: mode, Enqueue: true})
		require.NoError(t, err)
		require.Equal(t, want, res.Status, "%s for lease %d", name, lease)
		return res.Token
	}
	a, c := lease("a"), lease("c")
	acquire("x", a, dialect.Exclusive, dialect.Granted)
	acquire("y", a, dialect.Shared, dialect.Granted)
	acquire("z", c, dialect.Exclusive, dialect.Granted)
	acquire("z", a, dialect.Exclusive, dialect.Blocked) // a waits for z
	// Notifications go to the live waiters at the head of each queue: one
	// per name (on z, the one behind a, whose lease the break kills).
	acquire("x", lease("wx"), dialect.Exclusive, dialect.Blocked)
	acquire("y", lease("wy"), dialect.Exclusive, dialect.Blocked)
	acquire("z", lease("wz"), dialect.Exclusive, dialect.Blocked)
	tm := acquire("marker", c, dialect.Exclusive, dialect.Granted)
	acquire("marker", lease("w"), dialect.Exclusive, dialect.Blocked) // a release notifies only when someone waits

	broken, err := d.Break(ctx, db.DB, "x", "c")
	require.NoError(t, err)
	require.Empty(t, broken)
	ok, err := d.Release(ctx, db.DB, &dialect.HoldRef{Name: "marker", LeaseID: c, Token: tm})
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "marker", l.next(t).Name, "a Break that breaks nothing notifies nothing")

	broken, err = d.Break(ctx, db.DB, "x", "a")
	require.NoError(t, err)
	require.Len(t, broken, 1)
	require.Equal(t, a, broken[0].ID)
	require.Equal(t, 2, broken[0].Holds)
	require.Equal(t, 1, broken[0].Waits)
	require.True(t, broken[0].Broken)
	require.False(t, broken[0].Live)
	require.LessOrEqual(t, broken[0].ExpiresIn, time.Duration(0))
	heard := map[string]bool{}
	for range 3 {
		heard[l.next(t).Name] = true
	}
	require.Equal(t, map[string]bool{"x": true, "y": true, "z": true}, heard)
}

// Break locks lease rows FOR NO KEY UPDATE, which does not conflict with a
// fence's FOR KEY SHARE: it does not wait for a fenced transaction, whose
// next Fence then fails.
func TestBreakDoesNotWaitForAFence(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	a := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: a, Owner: "a", TTL: time.Minute}))
	res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "n", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	hold := &dialect.HoldRef{Name: "n", LeaseID: a, Token: res.Token}
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	ok, err := d.Fence(ctx, db.DB, tx, hold, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)

	other := testdb.Reopen(t, db.Kind, db.DSN).DB
	other.SetMaxOpenConns(1)
	_, err = other.ExecContext(ctx, `SET lock_timeout = '5s'`) // fail rather than hang if it waited
	require.NoError(t, err)
	broken, err := d.Break(ctx, other, "n", "")
	require.NoError(t, err)
	require.Len(t, broken, 1)

	ok, err = d.Fence(ctx, db.DB, tx, hold, time.Minute)
	require.NoError(t, err)
	require.False(t, ok, "the fenced transaction's next Fence sees the break")
	require.NoError(t, tx.Rollback())
}

// The prefix filter compares bytes: a prefix that ends inside a multi-byte
// character matches, and one that cannot begin any text (a stray
// continuation byte, a NUL) matches nothing, without an error.
func TestLocksPrefixIsByteExact(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	a := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: a, Owner: "a", TTL: time.Minute}))
	for _, name := range []string{"é/1", "e/1", "ü", "E"} {
		res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive})
		require.NoError(t, err)
		require.Equal(t, dialect.Granted, res.Status)
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", []string{"E", "e/1", "é/1", "ü"}},
		{"\xc3", []string{"é/1", "ü"}},
		{"\xc3\xa9", []string{"é/1"}},
		{"\xc3\xa9/", []string{"é/1"}},
		{"e", []string{"e/1"}},
		{"\xa9", nil},
		{"\xff", nil},
		{"\x00", nil},
		{"e\x00", nil},
		{"é/1\xc3", nil},
	} {
		locks, err := d.Locks(ctx, db.DB, &dialect.LocksFilter{Prefix: tc.prefix})
		require.NoError(t, err, "%q", tc.prefix)
		var got []string
		for _, l := range locks {
			got = append(got, l.Name)
		}
		require.Equal(t, tc.want, got, "prefix %q", tc.prefix)
	}
}

// Operators break leases while clients acquire, queue, release, fence and
// renew, and others read Locks and Leases. Break never fails: it locks only
// leases that are live, in id order and all at once, and nothing else, while
// a takeover locks only dead ones, so it is never part of a deadlock (with
// leases of a minute, none expires during the test). Every Locks answer shows
// mutual exclusion among live holds, and no lease is ever broken before its
// expiry (broken_at < expires_at).
func TestBreakUnderLoad(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	const workers = 6
	names := []string{"a", "b", "c", "d"}
	run, stop := context.WithTimeout(ctx, 3*time.Second)
	defer stop()

	var grants, breaks, inspections, retries atomic.Int64
	errs := make(chan error, workers+4)
	var wg sync.WaitGroup

	breaker := testdb.Reopen(t, db.Kind, db.DSN).DB
	wg.Go(func() {
		r := rand.New(rand.NewPCG(1, uint64(time.Now().UnixNano())))
		for run.Err() == nil {
			owner := ""
			if r.IntN(3) == 0 {
				owner = fmt.Sprint("w", r.IntN(workers))
			}
			broken, err := d.Break(ctx, breaker, names[r.IntN(len(names))], owner)
			if err != nil {
				errs <- fmt.Errorf("break: %w", err)
				return
			}
			breaks.Add(int64(len(broken)))
		}
	})
	inspector := testdb.Reopen(t, db.Kind, db.DSN).DB
	wg.Go(func() {
		for run.Err() == nil {
			locks, err := d.Locks(ctx, inspector, &dialect.LocksFilter{})
			if err != nil {
				errs <- fmt.Errorf("locks: %w", err)
				return
			}
			for _, l := range locks {
				var x, s int
				for _, h := range l.Holders {
					if h.Live && h.Mode == dialect.Exclusive {
						x++
					} else if h.Live {
						s++
					}
				}
				if x > 1 || (x == 1 && s > 0) {
					errs <- fmt.Errorf("conflicting live holds of %s: %+v", l.Name, l.Holders)
					return
				}
			}
			if _, err := d.Leases(ctx, inspector); err != nil {
				errs <- fmt.Errorf("leases: %w", err)
				return
			}
			var bad int
			if err := inspector.QueryRowContext(ctx, `SELECT count(*) FROM sqldlm_leases WHERE broken_at < expires_at`).Scan(&bad); err != nil {
				errs <- err
				return
			}
			if bad > 0 {
				errs <- fmt.Errorf("%d leases broken before their expiry", bad)
				return
			}
			inspections.Add(1)
		}
	})

	for w := range workers {
		pool := testdb.Reopen(t, db.Kind, db.DSN).DB
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			type held struct {
				name  string
				token int64
			}
			var lease int64
			var holds []held
			var pending *dialect.AcquireParams
			stopped := false
			// ok reports whether op succeeded; a retryable error (a deadlock
			// between takeovers included) skips the step, another stops.
			ok := func(op string, err error) bool {
				switch {
				case err == nil:
					return true
				case dialect.IsRetryable(err):
					retries.Add(1)
				default:
					errs <- fmt.Errorf("worker %d: %s: %w", w, op, err)
					stopped = true
				}
				return false
			}
			newLease := func() {
				lease, holds, pending = r.Int64(), nil, nil
				ok("create lease", d.CreateLease(ctx, pool, &dialect.CreateLeaseParams{ID: lease, Owner: fmt.Sprint("w", w), TTL: time.Minute}))
			}
			newLease()
			for run.Err() == nil && !stopped {
				switch op := r.IntN(10); {
				case op < 5:
					p := pending
					if p == nil {
						mode := []dialect.Mode{dialect.Shared, dialect.Exclusive}[r.IntN(2)]
						p = &dialect.AcquireParams{Name: names[r.IntN(len(names))], LeaseID: lease, RequestID: r.Int64(), Mode: mode, Enqueue: r.IntN(2) == 0}
					}
					pending = nil
					res, err := d.Acquire(ctx, pool, p)
					if !ok("acquire", err) {
						if p.Enqueue {
							pending = p
						}
						continue
					}
					switch res.Status {
					case dialect.Granted:
						grants.Add(1)
						holds = append(holds, held{p.Name, res.Token})
					case dialect.LeaseLost:
						newLease()
					case dialect.Blocked:
						if p.Enqueue {
							pending = p
						}
					}
				case op < 7 && len(holds) > 0:
					i := r.IntN(len(holds))
					if _, err := d.Release(ctx, pool, &dialect.HoldRef{Name: holds[i].name, LeaseID: lease, Token: holds[i].token}); ok("release", err) {
						holds = append(holds[:i], holds[i+1:]...)
					}
				case op < 8 && len(holds) > 0:
					h := holds[r.IntN(len(holds))]
					tx, err := pool.BeginTx(ctx, nil)
					if !ok("begin", err) {
						continue
					}
					_, err = d.Fence(ctx, pool, tx, &dialect.HoldRef{Name: h.name, LeaseID: lease, Token: h.token}, time.Second)
					_ = tx.Rollback()
					ok("fence", err)
				default:
					renewed, err := d.RenewLease(ctx, pool, lease)
					if ok("renew", err) && !renewed {
						newLease()
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	t.Logf("%d grants, %d leases broken, %d inspections, %d retryable errors", grants.Load(), breaks.Load(), inspections.Load(), retries.Load())
	require.Positive(t, grants.Load())
	require.Positive(t, breaks.Load())
	require.Positive(t, inspections.Load())
}

// A pending upgrade is first in line, in Locks and in sqldlm_waiters_view,
// ahead of waiters that arrived before it.
func TestLocksShowsUpgradesFirst(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	lease := func(owner string) int64 {
		id := rand.Int64()
		require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: id, Owner: owner, TTL: time.Minute}))
		return id
	}
	acquire := func(p dialect.AcquireParams, want dialect.AcquireStatus) int64 {
		p.RequestID = rand.Int64()
		res, err := d.Acquire(ctx, db.DB, &p)
		require.NoError(t, err)
		require.Equal(t, want, res.Status, "%+v", p)
		return res.Token
	}
	s1, s2, e := lease("s1"), lease("s2"), lease("e")
	t1 := acquire(dialect.AcquireParams{Name: "n", LeaseID: s1, Mode: dialect.Shared}, dialect.Granted)
	acquire(dialect.AcquireParams{Name: "n", LeaseID: s2, Mode: dialect.Shared}, dialect.Granted)
	acquire(dialect.AcquireParams{Name: "n", LeaseID: e, Mode: dialect.Exclusive, Enqueue: true}, dialect.Blocked)
	acquire(dialect.AcquireParams{Name: "n", LeaseID: s1, Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: t1}, dialect.Blocked)

	locks, err := d.Locks(ctx, db.DB, &dialect.LocksFilter{Owner: "e"})
	require.NoError(t, err)
	require.Len(t, locks, 1)
	w := locks[0].Waiters
	require.Len(t, w, 2)
	require.Equal(t, "s1", w[0].Owner)
	require.True(t, w[0].Upgrade)
	require.Equal(t, 1, w[0].Position)
	require.Equal(t, "e", w[1].Owner)
	require.False(t, w[1].Upgrade)
	require.Equal(t, 2, w[1].Position)

	var owners []string
	rows, err := db.QueryContext(ctx, `SELECT owner FROM sqldlm_waiters_view WHERE name = 'n' ORDER BY position`)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var o string
		require.NoError(t, rows.Scan(&o))
		owners = append(owners, o)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"s1", "e"}, owners)
}
