package postgres_test

import (
	"context"
	"database/sql"
	"errors"
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

// Two shared holders that ask to upgrade at the same moment: exactly one is
// queued and the other refused, never both refused (the first enqueue of an
// upgrade is serialized on the name's row).
func TestConcurrentUpgradesOneIsRefused(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	pools := []*sql.DB{testdb.Reopen(t, db.Kind, db.DSN).DB, testdb.Reopen(t, db.Kind, db.DSN).DB}
	for round := range 30 {
		name := fmt.Sprintf("n%d", round)
		var leases, tokens [2]int64
		for i := range 2 {
			leases[i] = rand.Int64()
			require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: leases[i], Owner: "o", TTL: time.Minute}))
			res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: leases[i], RequestID: rand.Int64(), Mode: dialect.Shared})
			require.NoError(t, err)
			require.Equal(t, dialect.Granted, res.Status)
			tokens[i] = res.Token
		}
		var statuses [2]dialect.AcquireStatus
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range 2 {
			wg.Go(func() {
				<-start
				res, err := d.Acquire(ctx, pools[i], &dialect.AcquireParams{Name: name, LeaseID: leases[i], RequestID: rand.Int64(),
					Mode: dialect.Exclusive, Enqueue: true, UpgradeToken: tokens[i]})
				if err == nil {
					statuses[i] = res.Status
				} else {
					t.Errorf("upgrade: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
		require.ElementsMatch(t, []dialect.AcquireStatus{dialect.Blocked, dialect.UpgradeConflict}, statuses[:], "round %d", round)
	}
}

// A randomized workload of grants, upgrades, downgrades, releases, abandons,
// fences, lapsing and renewed leases and a reaper, on few names, while a
// checker verifies mutual exclusion in every snapshot it takes: a hold counts
// while its lease is live by clock_timestamp(), read after the snapshot (an
// expired lease stays expired, so such a lease was live at every earlier
// moment since the snapshot's version of it was written).
func TestRandomizedMutualExclusion(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	const workers = 8
	names := []string{"a", "b", "c"}
	run, stop := context.WithTimeout(ctx, 3*time.Second)
	defer stop()

	var grants, retries, deadlocks atomic.Int64
	errs := make(chan error, workers+2)
	var wg sync.WaitGroup

	checker := testdb.Reopen(t, db.Kind, db.DSN).DB
	wg.Go(func() {
		for run.Err() == nil {
			var bad sql.NullString
			err := checker.QueryRowContext(ctx, `SELECT string_agg(name, ',') FROM (
				SELECT h.name FROM sqldlm_holds h JOIN sqldlm_leases l ON l.id = h.lease_id
				WHERE l.broken_at IS NULL AND l.expires_at > clock_timestamp()
				GROUP BY h.name
				HAVING count(*) FILTER (WHERE h.mode = 'X') > 1
				    OR (count(*) FILTER (WHERE h.mode = 'X') = 1 AND count(*) > 1)) s`).Scan(&bad)
			if err != nil {
				errs <- err
				return
			}
			if bad.Valid {
				errs <- fmt.Errorf("conflicting live holds of %s", bad.String)
				return
			}
		}
	})
	reaper := testdb.Reopen(t, db.Kind, db.DSN).DB
	wg.Go(func() {
		for run.Err() == nil {
			if _, err := d.Reap(ctx, reaper, 5, 0); err != nil && !dialect.IsRetryable(err) {
				errs <- fmt.Errorf("reap: %w", err)
				return
			}
		}
	})

	for w := range workers {
		pool := testdb.Reopen(t, db.Kind, db.DSN).DB
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			type held struct {
				name  string
				token int64
				mode  dialect.Mode
			}
			var lease int64
			var holds []held
			var pending *dialect.AcquireParams // a queued request
			fail := func(op string, err error) bool {
				if err == nil {
					return false
				}
				if errors.Is(err, dialect.ErrDeadlock) {
					deadlocks.Add(1)
				}
				if dialect.IsRetryable(err) {
					retries.Add(1)
					return true
				}
				errs <- fmt.Errorf("worker %d: %s: %w", w, op, err)
				return true
			}
			newLease := func() bool {
				lease = r.Int64()
				holds, pending = nil, nil
				ttl := time.Duration(20+r.IntN(60)) * time.Millisecond
				return !fail("create lease", d.CreateLease(ctx, pool, &dialect.CreateLeaseParams{ID: lease, Owner: fmt.Sprint("w", w), TTL: ttl}))
			}
			if !newLease() {
				return
			}
			for run.Err() == nil {
				switch op := r.IntN(10); {
				case op < 4: // acquire, or retry the queued request
					p := pending
					if p == nil {
						mode := []dialect.Mode{dialect.Shared, dialect.Exclusive}[r.IntN(2)]
						p = &dialect.AcquireParams{Name: names[r.IntN(len(names))], LeaseID: lease, RequestID: r.Int64(), Mode: mode, Enqueue: r.IntN(2) == 0}
					}
					pending = nil
					res, err := d.Acquire(ctx, pool, p)
					if fail("acquire", err) {
						if p.Enqueue {
							pending = p
						}
						continue
					}
					switch res.Status {
					case dialect.Granted:
						grants.Add(1)
						holds = append(holds, held{p.Name, res.Token, p.Mode})
					case dialect.LeaseLost:
						if !newLease() {
							return
						}
					case dialect.Blocked:
						if p.Enqueue && r.IntN(3) == 0 {
							_, err := d.Abandon(ctx, pool, &dialect.AbandonParams{Name: p.Name, LeaseID: lease, RequestID: p.RequestID})
							if fail("abandon", err) {
								pending = p
							}
						} else if p.Enqueue {
							pending = p // keeps its place in the queue
						}
					}
				case op < 6 && len(holds) > 0: // release
					i := r.IntN(len(holds))
					h := holds[i]
					_, err := d.Release(ctx, pool, &dialect.HoldRef{Name: h.name, LeaseID: lease, Token: h.token})
					if !fail("release", err) {
						holds = append(holds[:i], holds[i+1:]...)
					}
				case op < 7 && len(holds) > 0: // upgrade or downgrade
					i := r.IntN(len(holds))
					h := holds[i]
					if h.mode == dialect.Shared {
						res, err := d.Acquire(ctx, pool, &dialect.AcquireParams{Name: h.name, LeaseID: lease, RequestID: r.Int64(),
							Mode: dialect.Exclusive, UpgradeToken: h.token})
						if !fail("upgrade", err) && res.Status == dialect.Granted {
							grants.Add(1)
							holds[i] = held{h.name, res.Token, dialect.Exclusive}
						}
					} else {
						ok, err := d.Downgrade(ctx, pool, &dialect.HoldRef{Name: h.name, LeaseID: lease, Token: h.token})
						if !fail("downgrade", err) && ok {
							holds[i].mode = dialect.Shared
						}
					}
				case op < 8 && len(holds) > 0: // fenced transaction
					h := holds[r.IntN(len(holds))]
					tx, err := pool.BeginTx(ctx, nil)
					if fail("begin", err) {
						continue
					}
					_, err = d.Fence(ctx, pool, tx, &dialect.HoldRef{Name: h.name, LeaseID: lease, Token: h.token}, time.Second)
					fail("fence", err)
					_ = tx.Rollback()
				case op < 9: // renew, and sometimes let the lease lapse
					ok, err := d.RenewLease(ctx, pool, lease)
					if !fail("renew", err) && !ok && !newLease() {
						return
					}
				default:
					if r.IntN(20) == 0 {
						_, err := d.DeleteLease(ctx, pool, lease)
						if fail("delete lease", err) || !newLease() {
							return
						}
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
	t.Logf("%d grants, %d retryable errors (%d deadlocks)", grants.Load(), retries.Load(), deadlocks.Load())
	require.Positive(t, grants.Load())
}

// A holder renews its lease just around its expiry while another lease keeps
// trying to take the name over. A renewal and a takeover serialize on the
// lease row: a takeover never breaks a lease that a renewal has extended, and
// after a takeover no renewal succeeds.
func TestRenewalRacesTakeover(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	holderDB, takerDB := testdb.Reopen(t, db.Kind, db.DSN).DB, testdb.Reopen(t, db.Kind, db.DSN).DB
	const ttl = 40 * time.Millisecond
	taker := rand.Int64()
	require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: taker, Owner: "taker", TTL: time.Minute}))
	// A takeover breaks only a lease that has expired by the clock, and a
	// renewal never extends a broken lease: broken_at >= expires_at always.
	// A takeover that judged a stale version of the lease would break it
	// after a renewal extended it.
	consistent := func(lease int64) bool {
		var bad bool
		if err := holderDB.QueryRowContext(ctx, `SELECT COALESCE(broken_at < expires_at, false) FROM sqldlm_leases WHERE id = $1`, lease).Scan(&bad); err != nil {
			t.Errorf("read lease: %v", err)
			return false
		}
		if bad {
			t.Errorf("lease %d was broken before its renewed expiry", lease)
		}
		return !bad
	}
	takeovers := 0
	for round := range 40 {
		name := fmt.Sprint("n", round)
		lease := rand.Int64()
		require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: lease, Owner: "holder", TTL: ttl}))
		res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: rand.Int64(), Mode: dialect.Exclusive})
		require.NoError(t, err)
		if res.Status == dialect.LeaseLost { // the short lease lapsed already (a slow machine)
			continue
		}
		require.Equal(t, dialect.Granted, res.Status)

		done := make(chan struct{})
		var took atomic.Bool
		var wg sync.WaitGroup
		wg.Go(func() {
			defer close(done)
			for range 6 {
				time.Sleep(ttl - 4*time.Millisecond + rand.N(8*time.Millisecond)) // pacing around the expiry, not synchronisation
				ok, err := d.RenewLease(ctx, holderDB, lease)
				if err != nil {
					t.Errorf("renew: %v", err)
					return
				}
				if !ok {
					return
				}
				if !consistent(lease) {
					return
				}
			}
		})
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				res, err := d.Acquire(ctx, takerDB, &dialect.AcquireParams{Name: name, LeaseID: taker, RequestID: rand.Int64(), Mode: dialect.Exclusive})
				if err != nil {
					t.Errorf("takeover: %v", err)
					return
				}
				if res.Status == dialect.Granted {
					took.Store(true)
					return
				}
			}
		})
		wg.Wait()
		require.True(t, consistent(lease))
		if took.Load() {
			takeovers++
			ok, err := d.RenewLease(ctx, db.DB, lease)
			require.NoError(t, err)
			require.False(t, ok, "round %d: renewed after the takeover", round)
		}
	}
	t.Logf("%d of 40 rounds ended in a takeover", takeovers)
}

// A takeover of an expired hold that a fenced transaction pins does not wait
// in the server (where it would outlive a caller that gave up, and commit a
// grant nobody receives): it is answered Blocked at once, and succeeds once
// the transaction has ended.
func TestTakeoverOfFencedHoldDoesNotWait(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d := postgres.Dialect()
	db := testdb.OpenMigrated(t, testdb.Postgres)
	other := testdb.Reopen(t, db.Kind, db.DSN).DB
	a, c := rand.Int64(), rand.Int64()
	// a's lease lives 1s, long enough for its grant and fence under the
	// suite's load (at 100ms its grant once found it expired), then expires.
	require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: a, Owner: "a", TTL: time.Second}))
	require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: c, Owner: "c", TTL: time.Minute}))
	res, err := d.Acquire(ctx, db.DB, &dialect.AcquireParams{Name: "n", LeaseID: a, RequestID: rand.Int64(), Mode: dialect.Exclusive})
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	ok, err := d.Fence(ctx, db.DB, tx, &dialect.HoldRef{Name: "n", LeaseID: a, Token: res.Token}, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	var timeout string
	require.NoError(t, tx.QueryRowContext(ctx, `SHOW idle_in_transaction_session_timeout`).Scan(&timeout))
	require.Equal(t, "1min", timeout, "the fence bounds how long tx may sit idle")

	require.Eventually(t, func() bool { // until a's lease has expired by the server's clock
		var live bool
		err := other.QueryRowContext(ctx, `SELECT expires_at > clock_timestamp() FROM sqldlm_leases WHERE id = $1`, a).Scan(&live)
		return err == nil && !live
	}, 10*time.Second, 5*time.Millisecond)
	p := &dialect.AcquireParams{Name: "n", LeaseID: c, RequestID: rand.Int64(), Mode: dialect.Exclusive, Enqueue: true}
	res, err = d.Acquire(ctx, other, p)
	require.NoError(t, err)
	require.Equal(t, dialect.Blocked, res.Status)
	require.Equal(t, "a", res.Blocker.Owner)
	require.LessOrEqual(t, res.Blocker.ExpiresIn, time.Duration(0), "how long the fence pins the hold is unknown")
	// The server reports it unknown (NULL), not 0, which reads as "free now"
	// and made waiters poll every millisecond. (The request's repeat: it has
	// no waiter ahead, so it reaches the takeover.)
	var (
		status  string
		expires sql.NullInt64
	)
	require.NoError(t, other.QueryRowContext(ctx, `SELECT o_status, o_expires_us FROM sqldlm_acquire($1, $2, $3, 'X', true, 0, '', 0)`,
		"n", c, p.RequestID).Scan(&status, &expires))
	require.Equal(t, "blocked", status)
	require.False(t, expires.Valid, "a pinned hold's expiry: %d us", expires.Int64)
	var waiters int
	require.NoError(t, other.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_waiters`).Scan(&waiters))
	require.Equal(t, 1, waiters, "the blocked request is queued")

	require.NoError(t, tx.Commit())
	res, err = d.Acquire(ctx, other, p)
	require.NoError(t, err)
	require.Equal(t, dialect.Granted, res.Status)
	require.NoError(t, other.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqldlm_waiters`).Scan(&waiters))
	require.Zero(t, waiters)
}
