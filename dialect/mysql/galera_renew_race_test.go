//go:build linux

package mysql_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/dialecttest"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
)

// TestGaleraRenewTakeoverRaceLong hunts issue 15 on a 3-node Galera
// cluster: the conformance case RenewalAndTakeoverSerialize (a renewal that
// starts after a takeover returned must fail) failed once through one node
// under the full suite's load. It runs that race for SQLDLM_TEST_GALERA_RACE
// rounds (unset: skipped) through node 0, each from 20 ms before the
// holder's expiry by the server's clock, while the conformance suite runs on
// the same node (SQLDLM_TEST_GALERA_RACE_SUITE=1) and CPU burners spin
// (SQLDLM_TEST_GALERA_RACE_BURN goroutines). A trigger logs every change of
// the lease rows with the connection and the server's clock, and a failed
// round prints them with every call's times and results.
//
// Under that load schema version 6 failed within 30 rounds: a renewal's
// COMMIT (slow through Galera) landed between sqldlm_acquire_decide's check
// of the holds and its takeover loop, and the request was granted beside
// the renewed hold (TestRenewalCommittedDuringGrant makes it deterministic).
func TestGaleraRenewTakeoverRaceLong(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("SQLDLM_TEST_GALERA_RACE"))
	if rounds <= 0 {
		t.Skip("set SQLDLM_TEST_GALERA_RACE=<rounds> to hunt issue 15 on a 3-node Galera cluster")
	}
	burn, _ := strconv.Atoi(os.Getenv("SQLDLM_TEST_GALERA_RACE_BURN"))
	nodes := 3
	if n, _ := strconv.Atoi(os.Getenv("SQLDLM_TEST_GALERA_RACE_NODES")); n > 0 {
		nodes = n
	}
	g := &galera{c: dbinstance.StartGalera(t, nodes)}
	for k := range g.c.Nodes {
		g.admin = append(g.admin, g.open(t, k, "test", ""))
	}
	stop := make(chan struct{})
	var loadWG sync.WaitGroup
	defer func() { close(stop); loadWG.Wait() }()
	for range burn {
		loadWG.Go(func() {
			x := 1
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := range 100000 {
					x = x*31 + i
				}
				runtime.Gosched()
			}
		})
	}
	if os.Getenv("SQLDLM_TEST_GALERA_RACE_SUITE") == "1" {
		h := g.harness(func(int) int { return 0 }, "")
		h.Skip = map[string]string{"Locker/RenewalAndTakeoverSerialize": "run by the hunt itself"}
		loadWG.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				t.Run(fmt.Sprintf("Suite%d", i), func(t *testing.T) { dialecttest.Exercise(t, h) })
			}
		})
	}
	renewTakeoverHunt(t, g, rounds)
}

// raceEvent is one call in a round, with times from the test's start by
// the monotonic clock (and the wall clock, which the conformance case uses).
type raceEvent struct {
	what       string
	start, end time.Duration
	wallStart  int64
	wallEnd    int64
	ok         bool
	detail     string
}

func renewTakeoverHunt(t *testing.T, g *galera, rounds int) {
	d := mysql.Dialect().(dialect.Testable)
	database := g.migrated(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	db := g.open(t, 0, database, "")
	renewPool, takePool := g.open(t, 0, database, ""), g.open(t, 0, database, "")
	for _, stmt := range []string{
		`CREATE TABLE race_log (
			seq BIGINT AUTO_INCREMENT PRIMARY KEY,
			lease_id BIGINT NOT NULL,
			at DATETIME(6) NOT NULL,
			conn BIGINT NOT NULL,
			old_expires DATETIME(6), new_expires DATETIME(6),
			old_broken DATETIME(6), new_broken DATETIME(6)
		) ENGINE=InnoDB`,
		`CREATE TRIGGER race_log_upd AFTER UPDATE ON sqldlm_leases FOR EACH ROW
			INSERT INTO race_log (lease_id, at, conn, old_expires, new_expires, old_broken, new_broken)
			VALUES (NEW.id, SYSDATE(6), CONNECTION_ID(), OLD.expires_at, NEW.expires_at, OLD.broken_at, NEW.broken_at)`,
	} {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	taker := nextID()
	require.NoError(t, d.CreateLease(ctx, db, &dialect.CreateLeaseParams{ID: taker, Owner: "taker", TTL: time.Hour}))
	base := time.Now()
	const ttl = 300 * time.Millisecond
	var violations, contested, renewedAfterGrant, skipped int
	for round := range rounds {
		name := fmt.Sprintf("race/%d", round)
		holder := nextID()
		require.NoError(t, d.CreateLease(ctx, db, &dialect.CreateLeaseParams{ID: holder, Owner: "holder", TTL: ttl}))
		res, err := d.Acquire(ctx, db, &dialect.AcquireParams{Name: name, LeaseID: holder, RequestID: nextID(), Mode: dialect.Exclusive})
		if err != nil || res.Status != dialect.Granted {
			// Under load the lease may expire before its grant.
			t.Logf("round %d: the holder's grant: %v %+v", round, err, res)
			skipped++
			continue
		}
		tok := res.Token
		// Race from 20 ms before the lease's expiry by the server's clock
		// (the conformance case waits ttl-20ms from a reading after the
		// grant, which a loaded machine turns into a race after expiry).
		var expiresUS int64
		require.NoError(t, db.QueryRowContext(ctx, `SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', expires_at) FROM sqldlm_leases WHERE id = ?`, holder).Scan(&expiresUS))
		expires := time.UnixMicro(expiresUS)
		for {
			now, err := d.Now(ctx, db)
			require.NoError(t, err)
			if !now.Before(expires.Add(-20 * time.Millisecond)) {
				break
			}
			time.Sleep(2 * time.Millisecond) // a poll of the server's clock
		}
		var mu sync.Mutex
		var events []raceEvent
		record := func(e raceEvent) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}
		var granted atomic.Bool
		var grantedAt atomic.Int64
		var grantedMono atomic.Int64
		var late, lateMono atomic.Int64
		var wg sync.WaitGroup
		wg.Go(func() {
			time.Sleep(time.Duration(rand.IntN(15)) * time.Millisecond)
			for range 6 {
				s := time.Since(base)
				ws := time.Now().UnixNano()
				ok, err := d.RenewLease(ctx, renewPool, holder)
				e := time.Since(base)
				detail := ""
				if err != nil {
					detail = err.Error()
				}
				record(raceEvent{what: "renew", start: s, end: e, wallStart: ws, wallEnd: time.Now().UnixNano(), ok: ok, detail: detail})
				if ok && granted.Load() && ws > grantedAt.Load() {
					late.Add(1)
				}
				if ok && granted.Load() && int64(s) > grantedMono.Load() {
					lateMono.Add(1)
				}
				time.Sleep(3 * time.Millisecond)
			}
		})
		wg.Go(func() {
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); {
				s := time.Since(base)
				ws := time.Now().UnixNano()
				res, err := d.Acquire(ctx, takePool, &dialect.AcquireParams{Name: name, LeaseID: taker, RequestID: rand.Int64(), Mode: dialect.Exclusive})
				e := time.Since(base)
				we := time.Now().UnixNano()
				ev := raceEvent{what: "acquire", start: s, end: e, wallStart: ws, wallEnd: we}
				switch {
				case err != nil:
					ev.detail = err.Error()
				default:
					ev.ok = res.Status == dialect.Granted
					ev.detail = fmt.Sprintf("status %v token %d tookover %+v", res.Status, res.Token, res.TookOver)
				}
				record(ev)
				if err != nil {
					if dialect.IsRetryable(err) {
						continue
					}
					t.Errorf("acquire: %v", err)
					return
				}
				if res.Status == dialect.Granted {
					grantedAt.Store(we)
					grantedMono.Store(int64(e))
					granted.Store(true)
					return
				}
			}
		})
		wg.Wait()
		renewedOK := 0
		for _, e := range events {
			if e.what == "renew" && e.ok {
				renewedOK++
			}
		}
		if renewedOK > 0 {
			contested++
		}
		if late.Load() > 0 || lateMono.Load() > 0 || !granted.Load() {
			violations++
			var b strings.Builder
			fmt.Fprintf(&b, "round %d: holder %d taker %d granted %v late(wall) %d late(mono) %d\n", round, holder, taker, granted.Load(), late.Load(), lateMono.Load())
			for _, e := range events {
				fmt.Fprintf(&b, "  %-7s mono %v..%v wall %d..%d ok %v %s\n", e.what, e.start, e.end, e.wallStart, e.wallEnd, e.ok, e.detail)
			}
			rows, err := db.QueryContext(ctx, `SELECT seq, at, conn, COALESCE(old_expires, ''), COALESCE(new_expires, ''),
				COALESCE(old_broken, ''), COALESCE(new_broken, '') FROM race_log WHERE lease_id = ? ORDER BY seq`, holder)
			require.NoError(t, err)
			for rows.Next() {
				var seq, conn int64
				var at, oe, ne, ob, nb string
				require.NoError(t, rows.Scan(&seq, &at, &conn, &oe, &ne, &ob, &nb))
				fmt.Fprintf(&b, "  log %d at %s conn %d expires %s -> %s broken %s -> %s\n", seq, at, conn, oe, ne, ob, nb)
			}
			require.NoError(t, rows.Err())
			rows.Close()
			var row string
			require.NoError(t, db.QueryRowContext(ctx, `SELECT CONCAT_WS(' ', created_at, renewed_at, expires_at, COALESCE(broken_at, 'NULL'), SYSDATE(6)) FROM sqldlm_leases WHERE id = ?`, holder).Scan(&row))
			fmt.Fprintf(&b, "  lease row (created renewed expires broken now): %s\n", row)
			t.Log(b.String())
		}
		var after sql.NullBool
		require.NoError(t, db.QueryRowContext(ctx, `SELECT broken_at >= expires_at FROM sqldlm_leases WHERE id = ?`, holder).Scan(&after))
		ok, err := d.RenewLease(ctx, db, holder)
		require.NoError(t, err)
		if ok || !after.Valid || !after.Bool {
			t.Errorf("round %d: after the race, renewal %v, broken_at >= expires_at %v", round, ok, after)
		}
		for _, e := range events {
			if e.what == "renew" && e.ok && granted.Load() && int64(e.start) > grantedMono.Load() {
				renewedAfterGrant++
			}
		}
		released, err := d.Release(ctx, db, &dialect.HoldRef{Name: name, LeaseID: holder, Token: tok})
		require.NoError(t, err)
		if released {
			t.Errorf("round %d: the old hold survived the race", round)
		}
		if round%50 == 49 {
			t.Logf("%d rounds, %d with a successful renewal in the race, %d violations", round+1, contested, violations)
		}
	}
	t.Logf("%d rounds (%d skipped: the holder's grant came too late): %d with a successful renewal in the race, %d violations (late renewals by the monotonic clock: %d)",
		rounds, skipped, contested, violations, renewedAfterGrant)
	require.Zero(t, violations)
}
