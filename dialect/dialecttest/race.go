package dialecttest

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// testRenewTakeoverRace (invariant 3): a holder renews its lease over and
// over just as it expires, while another lease tries to take the lock over.
// Deciding that the lease expired and renewing it must serialize on the
// lease row: once the takeover is granted, no renewal that starts later may
// succeed, and the old holder's hold is gone. An implementation that judged
// expiry from a stale snapshot would let both succeed.
func testRenewTakeoverRace(t *testing.T, b *lockerBundle) {
	renewPool, takePool := b.reopen(t), b.reopen(t)
	taker := b.lease("taker", time.Minute)
	const ttl = 300 * time.Millisecond
	for round := range 12 {
		name := fmt.Sprintf("race/%d", round)
		holder := b.lease("holder", ttl)
		tok := b.grant(name, holder, dialect.Exclusive)
		// Let the lease come close to expiry, then race.
		b.expire(ttl - 20*time.Millisecond)

		var granted atomic.Bool
		var grantedAt atomic.Int64 // UnixNano at which the takeover's call returned
		var lateRenewals atomic.Int64
		var wg sync.WaitGroup
		wg.Go(func() {
			// A few renewals around the expiry instant, then none: the lease
			// then expires for good and the taker must win eventually.
			time.Sleep(time.Duration(rand.IntN(15)) * time.Millisecond) // spread the race, not synchronisation
			for range 6 {
				started := time.Now().UnixNano()
				ok, err := b.d.RenewLease(b.ctx, renewPool, holder)
				if err != nil && !dialect.IsRetryable(err) {
					t.Errorf("renew: %v", err)
					return
				}
				if ok && granted.Load() && started > grantedAt.Load() {
					lateRenewals.Add(1)
				}
				time.Sleep(3 * time.Millisecond) // spacing of the renewals
			}
		})
		wg.Go(func() {
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
				res, err := b.d.Acquire(b.ctx, takePool, &dialect.AcquireParams{Name: name, LeaseID: taker, RequestID: rand.Int64(), Mode: dialect.Exclusive})
				if err != nil {
					if dialect.IsRetryable(err) {
						continue
					}
					t.Errorf("acquire: %v", err)
					return
				}
				if res.Status == dialect.Granted {
					grantedAt.Store(time.Now().UnixNano())
					granted.Store(true)
					return
				}
			}
		})
		wg.Wait()
		require.True(t, granted.Load(), "round %d: the lease expired for good but was never taken over", round)
		require.Zero(t, lateRenewals.Load(), "round %d: a renewal started after the takeover succeeded", round)
		var afterExpiry bool
		require.NoError(t, b.db.QueryRowContext(b.ctx, fmt.Sprintf(
			`SELECT broken_at >= expires_at FROM sqldlm_leases WHERE id = %d`, holder)).Scan(&afterExpiry))
		require.True(t, afterExpiry, "round %d: the takeover broke the lease before its (renewed) expiry", round)
		ok, err := b.d.RenewLease(b.ctx, b.db, holder)
		require.NoError(t, err)
		require.False(t, ok, "round %d: the taken-over lease renewed", round)
		require.False(t, b.release(name, holder, tok), "round %d: the old hold survived the takeover", round)
	}
}

// A takeover and the reaper decide that a lease has expired: both must
// lose to a renewal that ran before the expiry but commits after it (they
// wait for the lease row, or pass it over, and find it live). The same
// class as the membership sweep's case (Grouper/RenewalInFlightWins), and
// as MySQL version 8's fix.
func testRenewalInFlightWinsOverTakeover(t *testing.T, b *lockerBundle) {
	const ttl = 3 * time.Second
	holder := b.lease("holder", ttl)
	taker := b.lease("taker", time.Minute)
	tok := b.grant("n", holder, dialect.Exclusive)
	commit := renewalInFlight(t, b.ctx, b.d, b.db, b.reopen, holder, ttl, b.expire)
	type outcome struct {
		res *dialect.AcquireResult
		err error
	}
	acquired := make(chan outcome, 1)
	reaped := make(chan error, 1)
	go func() {
		res, err := b.d.Acquire(b.ctx, b.reopen(t), &dialect.AcquireParams{Name: "n", LeaseID: taker, RequestID: rand.Int64(), Mode: dialect.Exclusive})
		acquired <- outcome{res, err}
	}()
	go func() {
		_, err := b.d.Reap(b.ctx, b.reopen(t), 100, time.Hour)
		reaped <- err
	}()
	time.Sleep(300 * time.Millisecond) // let both run into the open renewal (they may also pass it over at once)
	renewed := commit()
	select {
	case o := <-acquired:
		if o.err != nil {
			require.True(t, dialect.IsRetryable(o.err), "acquire: %v", o.err)
		} else if renewed {
			require.NotEqual(t, dialect.Granted, o.res.Status, "granted beside a hold whose renewal committed: took over %+v", o.res.TookOver)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the takeover never ended")
	}
	select {
	case err := <-reaped:
		if err != nil {
			require.True(t, dialect.IsRetryable(err), "reap: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reaper never ended")
	}
	if !renewed {
		// A takeover or the reaper on another Galera node ended the lease
		// first, and certification failed the renewal: it stays ended.
		ok, err := b.d.RenewLease(b.ctx, b.db, holder)
		require.NoError(t, err)
		require.False(t, ok)
		return
	}
	ok, err := b.d.RenewLease(b.ctx, b.db, holder)
	require.NoError(t, err)
	require.True(t, ok, "the renewed lease is live")
	require.True(t, b.release("n", holder, tok), "and so is its hold")
}
