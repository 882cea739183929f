//go:build linux

package mysql_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/dialecttest"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/migrations"
)

// TestGaleraCluster runs this package's tests that need a real 3-node
// Galera cluster (HA-2026-12), all on one cluster: starting one costs
// about 15 s and 150 MB per node. It skips when galera-4 is not installed,
// unless SQLDLM_TEST_REQUIRE names galera, and with -short.
func TestGaleraCluster(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("about a minute on a 3-node Galera cluster: skipped with -short")
	}
	began := time.Now()
	g := &galera{c: dbinstance.StartGalera(t, 3)}
	for k := range g.c.Nodes {
		g.admin = append(g.admin, g.open(t, k, "test", ""))
	}
	t.Logf("3-node cluster Synced after %v", g.c.Started.Round(10*time.Millisecond))
	t.Run("FenceMultiWriter", func(t *testing.T) { testGaleraFence(t, g) })
	t.Run("FenceIsolation", func(t *testing.T) { testGaleraFenceIsolation(t, g) })
	t.Run("AdviseTTL", func(t *testing.T) { testAdviseTTLOnGalera(t, g.admin[0]) })
	t.Run("UpgradeRace", func(t *testing.T) {
		// Through one node (single-writer), then from two nodes.
		database := g.migrated(t)
		one := g.open(t, 0, database, "")
		both := upgradeRace(t, one, one, 30)
		both += upgradeRace(t, one, g.open(t, 1, database, ""), 30)
		require.Zero(t, both, "trials in which both upgraders were refused")
	})
	t.Run("GroupLeaveRace", func(t *testing.T) {
		// A join through node 1 and a leave of the same request through
		// node 0: every group operation writes the group's row, so the
		// two conflict in certification (1213, retried) instead of both
		// committing.
		database := g.migrated(t)
		joins := g.open(t, 1, database, "")
		leaves := g.open(t, 0, database, "")
		check := g.open(t, 1, database, "wsrep_sync_wait=1")
		require.Zero(t, leaveRace(t, joins, leaves, check, 40), "trials in which the withdrawn request joined")
	})
	t.Run("ConformanceOneNode", func(t *testing.T) {
		h := g.harness(func(int) int { return 0 }, "")
		t.Run("Exercise", func(t *testing.T) { dialecttest.Exercise(t, h) })
		t.Run("Withdraw", func(t *testing.T) { dialecttest.ExerciseWithdraw(t, h) })
	})
	t.Run("ConformanceSpread", func(t *testing.T) {
		// Each database's first pool on one node, its reopened pools (second
		// processes) in turn on the other nodes: all three nodes write.
		var mu sync.Mutex
		next := 0
		h := g.harness(func(k int) int {
			if k > 0 {
				return k % 3
			}
			mu.Lock()
			defer mu.Unlock()
			next++
			return next % 3
		}, "wsrep_sync_wait=1")
		h.Skip = map[string]string{
			"Locker/FencePinsTheHold":   "a takeover through another Galera node is granted while the fence is open (nodes do not share row locks); the fenced transaction's COMMIT then fails (HA-2026-12 G3, TestGaleraCluster/FenceMultiWriter)",
			"ClassifyError/LockTimeout": "row locks are local to a Galera node: a second pool on another node never waits for them (HA-2026-12 §2.2)",
		}
		t.Run("Exercise", func(t *testing.T) { dialecttest.Exercise(t, h) })
		t.Run("Withdraw", func(t *testing.T) { dialecttest.ExerciseWithdraw(t, h) })
	})
	t.Cleanup(func() { t.Logf("cluster tests took %v in all", time.Since(began).Round(10*time.Millisecond)) })
}

// galera is the shared cluster, with a database of its own per test.
type galera struct {
	c     *dbinstance.Cluster
	admin []*sql.DB // a pool on each node's database "test"
}

// newDatabase creates an empty database on the cluster (through node 0)
// and returns its name once every node has it; it is dropped when t ends.
func (g *galera) newDatabase(t testing.TB) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "galera_" + hex.EncodeToString(b[:])
	quoted, err := mysql.Dialect().(dialect.Testable).QuoteIdentifier(name)
	require.NoError(t, err)
	_, err = g.admin[0].Exec("CREATE DATABASE " + quoted)
	require.NoError(t, err)
	t.Cleanup(func() {
		if _, err := g.admin[0].Exec("DROP DATABASE " + quoted); err != nil {
			t.Logf("drop %s: %v", name, err)
		}
	})
	// The other nodes apply the DDL in their own time.
	for _, admin := range g.admin[1:] {
		require.Eventually(t, func() bool {
			var n int
			err := admin.QueryRow(`SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = ?`, name).Scan(&n)
			return err == nil && n == 1
		}, 30*time.Second, 5*time.Millisecond, "database %s on every node", name)
	}
	return name
}

// harness is the conformance suite's harness on the cluster: each Open
// creates a database; its pool is on node node(0), and the n-th pool that
// reopen returns on node (node(0)+node(n)) mod 3; query holds the pools'
// DSN parameters.
func (g *galera) harness(node func(n int) int, query string) dialecttest.Harness {
	return dialecttest.Harness{
		Dialect: mysql.Dialect(),
		Open: func(t testing.TB) (*sql.DB, func(testing.TB) *sql.DB) {
			name := g.newDatabase(t)
			first := node(0)
			var mu sync.Mutex
			n := 0
			return g.open(t, first, name, query), func(t testing.TB) *sql.DB {
				mu.Lock()
				n++
				k := (first + node(n)) % 3
				mu.Unlock()
				db := g.open(t, k, name, query)
				// A read with wsrep_sync_wait waits until node k has applied
				// every write set committed before it, the migration's
				// procedures too (a CALL is not a read: it would not wait).
				var one int
				require.NoError(t, db.QueryRow(`SELECT 1`).Scan(&one))
				return db
			}
		},
	}
}

// migrated is newDatabase with sqldlm's migrations applied (through node 0).
func (g *galera) migrated(t testing.TB) string {
	t.Helper()
	name := g.newDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := migrations.Up(ctx, g.open(t, 0, name, ""), mysql.Dialect())
	require.NoError(t, err)
	return name
}

// dsn returns a DSN for database on node k, with extra DSN parameters
// (query, e.g. "wsrep_sync_wait=1", which the driver sets on every
// connection).
func (g *galera) dsn(t testing.TB, k int, database, query string) string {
	t.Helper()
	u, err := url.Parse(g.c.DSN(k))
	require.NoError(t, err)
	u.Path = "/" + database
	u.RawQuery = query
	return u.String()
}

// open opens a pool on database through node k, closed when t ends.
func (g *galera) open(t testing.TB, k int, database, query string) *sql.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, _, err := dsn.Open(ctx, g.dsn(t, k, database, query))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// ids hands out lease and request ids, unique within the test binary.
var ids = struct {
	sync.Mutex
	n int64
}{n: time.Now().UnixNano() & 0xffffffffffff}

func nextID() int64 {
	ids.Lock()
	defer ids.Unlock()
	ids.n++
	return ids.n
}

// grantOn acquires name for lease through db, retrying certification
// failures and blocked answers until granted (or ctx ends), and returns
// the token.
func grantOn(ctx context.Context, db *sql.DB, name string, lease int64, mode dialect.Mode) (int64, error) {
	d := mysql.Dialect()
	p := &dialect.AcquireParams{Name: name, LeaseID: lease, RequestID: nextID(), Mode: mode}
	for {
		res, err := d.Acquire(ctx, db, p)
		switch {
		case err != nil && (errors.Is(err, dialect.ErrDeadlock) || errors.Is(err, dialect.ErrLockTimeout)):
		case err != nil:
			return 0, fmt.Errorf("acquire %s: %w", name, err)
		case res.Status == dialect.Granted:
			return res.Token, nil
		case res.Status != dialect.Blocked:
			return 0, fmt.Errorf("acquire %s: status %v", name, res.Status)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("acquire %s: %w", name, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// testGaleraFence (HA-2026-12 G3): Fence must hold in multi-writer
// Galera. Holder H fences its exclusive hold on node 0 and writes a fenced
// counter in the same transaction; H's lease is broken through node 1, and
// W takes the name over through node 1 while H's transaction is open. Then
// H commits. Either order is allowed, but not both: H's COMMIT may succeed
// only if it comes before W's grant in the cluster's global commit order.
// No one else writes meanwhile, so the Galera seqno of W's grant is node
// 1's wsrep_last_committed once it returns, and that of H's commit is node
// 0's once it returns, or below it if W's grant was applied later.
//
// The race is made deterministic by holding node 0's applier back: a
// session of node 0 that does not replicate (wsrep_on=OFF, so Galera waits
// for its row lock instead of aborting it) locks a row that a write from
// node 2 then changes, so W's takeover, certified after that write, waits
// in node 0's queue; H commits meanwhile and is certified after W; then
// the gate opens. With a fence that is only a shared lock (version 5), H's
// write set does not name the hold: it passes certification, applying W's
// takeover on node 0 then aborts H's certified transaction, and Galera
// replays it after W's: H's fenced write commits after W was granted the
// lock. With the fence a write to the hold (version 6), H fails
// certification (1213).
func testGaleraFence(t *testing.T, g *galera) {
	d := mysql.Dialect()
	database := g.migrated(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db0 := g.open(t, 0, database, "")
	db1 := g.open(t, 1, database, "")
	db2 := g.open(t, 2, database, "")
	for _, stmt := range []string{
		`CREATE TABLE g3_counter (id INT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB`,
		`INSERT INTO g3_counter VALUES (1, 0)`,
		`CREATE TABLE g3_gate (id INT PRIMARY KEY, v BIGINT NOT NULL) ENGINE=InnoDB`,
		`INSERT INTO g3_gate VALUES (1, 0)`,
	} {
		_, err := db0.ExecContext(ctx, stmt)
		require.NoError(t, err, stmt)
	}
	gate, err := g.open(t, 0, database, "").Conn(ctx)
	require.NoError(t, err)
	defer gate.Close()
	_, err = gate.ExecContext(ctx, `SET SESSION wsrep_on = OFF`)
	require.NoError(t, err)
	// A node's wsrep_last_committed: the Galera seqno of the last write
	// set it committed (nodes commit in seqno order).
	lastCommitted := func(db *sql.DB) int64 {
		var name string
		var n int64
		require.NoError(t, db.QueryRowContext(ctx, `SHOW STATUS LIKE 'wsrep_last_committed'`).Scan(&name, &n))
		return n
	}
	watch1 := g.open(t, 1, database, "")

	wLease := nextID()
	require.NoError(t, d.CreateLease(ctx, db1, &dialect.CreateLeaseParams{ID: wLease, Owner: "W", TTL: 10 * time.Minute}))

	const trials = 20
	var ordered, committed, late int
	for i := range trials {
		name := fmt.Sprintf("g3/%d", i)
		hLease := nextID()
		require.NoError(t, d.CreateLease(ctx, db0, &dialect.CreateLeaseParams{ID: hLease, Owner: "H", TTL: time.Minute}))
		hTok, err := grantOn(ctx, db0, name, hLease, dialect.Exclusive)
		require.NoError(t, err)

		conn, err := db0.Conn(ctx)
		require.NoError(t, err)
		tx, err := conn.BeginTx(ctx, nil)
		require.NoError(t, err)
		ok, err := d.Fence(ctx, db0, tx, &dialect.HoldRef{Name: name, LeaseID: hLease, Token: hTok}, time.Minute)
		require.NoError(t, err)
		require.True(t, ok, "fenced")
		_, err = tx.ExecContext(ctx, `UPDATE g3_counter SET v = v + 1 WHERE id = 1`)
		require.NoError(t, err)
		// Broken through node 1 once node 1 has applied H's grant.
		for {
			broken, err := d.(dialect.Inspector).Break(ctx, db1, name, "H")
			require.NoError(t, err)
			if len(broken) == 1 {
				break
			}
			require.NoError(t, ctx.Err())
		}

		// Node 0's applier held back at the gate.
		gtx, err := gate.BeginTx(ctx, nil)
		require.NoError(t, err)
		_, err = gtx.ExecContext(ctx, `SELECT v FROM g3_gate WHERE id = 1 FOR UPDATE`)
		require.NoError(t, err)
		_, err = db2.ExecContext(ctx, `UPDATE g3_gate SET v = v + 1 WHERE id = 1`)
		require.NoError(t, err)

		// W takes over through node 1.
		wTok, err := grantOn(ctx, db1, name, wLease, dialect.Exclusive)
		require.NoError(t, err)
		wSeqno := lastCommitted(watch1)

		// H commits; it waits for node 0's queue. Once H's write set is
		// ordered after W's (node 1 has passed its seqno, whether H passed
		// certification or not) or H's COMMIT has returned, the gate opens.
		hDone := make(chan error, 1)
		go func() { hDone <- tx.Commit() }()
		var commitErr error
		done := false
		for deadline := time.Now().Add(5 * time.Second); !done && time.Now().Before(deadline); {
			select {
			case commitErr = <-hDone:
				done = true
			default:
				if lastCommitted(watch1) > wSeqno {
					ordered++
					deadline = time.Time{}
				}
			}
		}
		require.NoError(t, gtx.Rollback())
		if !done {
			commitErr = <-hDone
		}
		conn.Close()
		if commitErr == nil {
			hSeqno := lastCommitted(db0)
			committed++
			if hSeqno > wSeqno {
				late++
				t.Logf("trial %d: H's fenced commit (seqno %d) after W's grant (seqno %d, token %d > %d)", i, hSeqno, wSeqno, wTok, hTok)
			}
		} else {
			require.ErrorContains(t, commitErr, "1213", "H's commit fails only by a certification conflict")
		}
		_, err = d.Release(ctx, db1, &dialect.HoldRef{Name: name, LeaseID: wLease, Token: wTok})
		require.NoError(t, err)
	}
	t.Logf("%d trials, W granted while H's fenced transaction was open in all; H's COMMIT ordered after W's grant in %d; H committed in %d; H's fenced commit after W's grant in %d",
		trials, ordered, committed, late)
	require.Zero(t, late, "fenced commits after another client's grant")
}

// testGaleraFenceIsolation: through one Galera node, Fence's write to the
// hold works at READ COMMITTED, REPEATABLE READ (a snapshot taken before
// the lease's last renewal) and SERIALIZABLE: it pins the hold (a takeover
// of the broken lease is blocked until the transaction ends, then
// granted), and it locks nothing else in the transaction, so the lease's
// renewals go on at once while it is open (issue 13, defect 4). The
// hold's fences column shows the write once the transaction committed.
func testGaleraFenceIsolation(t *testing.T, g *galera) {
	d := mysql.Dialect()
	database := g.migrated(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := g.open(t, 0, database, "")
	c := nextID()
	require.NoError(t, d.CreateLease(ctx, db, &dialect.CreateLeaseParams{ID: c, Owner: "c", TTL: time.Minute}))
	for _, level := range []sql.IsolationLevel{sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelSerializable} {
		name := "iso/" + level.String()
		a := nextID()
		require.NoError(t, d.CreateLease(ctx, db, &dialect.CreateLeaseParams{ID: a, Owner: "a", TTL: time.Minute}))
		tok, err := grantOn(ctx, db, name, a, dialect.Exclusive)
		require.NoError(t, err)
		tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: level})
		require.NoError(t, err)
		var one int
		require.NoError(t, tx.QueryRowContext(ctx, `SELECT 1`).Scan(&one))
		renewed, err := d.RenewLease(ctx, db, a)
		require.NoError(t, err)
		require.True(t, renewed)
		ok, err := d.Fence(ctx, db, tx, &dialect.HoldRef{Name: name, LeaseID: a, Token: tok}, time.Minute)
		require.NoError(t, err, level)
		require.True(t, ok, "%v: fenced", level)
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		renewed, err = d.RenewLease(rctx, db, a)
		rcancel()
		require.NoError(t, err, "%v: a renewal waited for the fenced transaction", level)
		require.True(t, renewed)

		broken, err := d.(dialect.Inspector).Break(ctx, db, name, "a")
		require.NoError(t, err)
		require.Len(t, broken, 1)
		res, err := d.Acquire(ctx, db, &dialect.AcquireParams{Name: name, LeaseID: c, RequestID: nextID(), Mode: dialect.Exclusive})
		require.NoError(t, err)
		require.Equal(t, dialect.Blocked, res.Status, "%v: the fenced hold is taken over while the fence is open", level)
		require.NoError(t, tx.Commit())
		var fences int
		require.NoError(t, db.QueryRowContext(ctx, `SELECT fences FROM sqldlm_holders WHERE token = ?`, tok).Scan(&fences))
		require.Equal(t, 1, fences, "%v: the fence was a write to the hold", level)
		_, err = grantOn(ctx, db, name, c, dialect.Exclusive)
		require.NoError(t, err, "%v: taken over once the fenced transaction ended", level)
	}
}
