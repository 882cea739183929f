// Package dialecttest is the conformance suite every sqldlm dialect runs:
// each dialect's tests call [Exercise] with a way to open fresh databases.
// Any change to the dialect seam extends this suite.
package dialecttest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/migrations"
)

// Harness tells the suite how to reach databases of one dialect.
type Harness struct {
	Dialect dialect.Dialect
	// Open returns a new, empty database of its own for t, and a function
	// that opens another connection pool on that same database (as a second
	// process would).
	Open func(t testing.TB) (db *sql.DB, reopen func(testing.TB) *sql.DB)
	// Skip lists the cases that the databases Open returns cannot pass by
	// design, by their names below Exercise or ExerciseWithdraw
	// ("Locker/FencePinsTheHold"), each with the reason its skip reports
	// (e.g. a Galera cluster whose second pool is on another node).
	Skip map[string]string
	// Holds is the relation the suite counts holds in: every hold, of
	// every kind, with the columns of sqldlm_holders. Empty means
	// sqldlm_holders itself; a dialect that keeps some holds elsewhere
	// names a view of them all (PostgreSQL: sqldlm_holds).
	Holds string
}

// holds returns h.Holds, or sqldlm_holders.
func (h Harness) holds() string {
	if h.Holds == "" {
		return "sqldlm_holders"
	}
	return h.Holds
}

// skipListed skips t if h.Skip lists it.
func (h Harness) skipListed(t *testing.T) {
	t.Helper()
	for name, why := range h.Skip {
		if strings.HasSuffix(t.Name(), "/"+name) {
			t.Skip(why)
		}
	}
}

// Exercise runs the conformance suite.
func Exercise(t *testing.T, h Harness) {
	t.Helper()
	if _, ok := h.Dialect.(dialect.Testable); !ok {
		t.Fatalf("dialecttest: %T does not implement dialect.Testable (TimePrecision, Now, QuoteIdentifier), which the suite needs", h.Dialect)
	}
	t.Run("ClassifyError", func(t *testing.T) { t.Parallel(); testClassifyError(t, h) })
	t.Run("Migrate", func(t *testing.T) { t.Parallel(); testMigrate(t, h) })
	t.Run("MigrateConcurrently", func(t *testing.T) { t.Parallel(); testMigrateConcurrently(t, h) })
	t.Run("Now", func(t *testing.T) { t.Parallel(); testNow(t, h) })
	t.Run("Locker", func(t *testing.T) { t.Parallel(); exerciseLocker(t, h) })
	t.Run("Inspector", func(t *testing.T) { t.Parallel(); exerciseInspector(t, h) })
	t.Run("TxAndAudit", func(t *testing.T) { t.Parallel(); exerciseTxAndAudit(t, h) })
	t.Run("Grouper", func(t *testing.T) { t.Parallel(); exerciseGrouper(t, h) })
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func migrated(t testing.TB, h Harness) (*sql.DB, func(testing.TB) *sql.DB) {
	t.Helper()
	db, reopen := h.Open(t)
	_, err := migrations.Up(ctxFor(t), db, h.Dialect)
	require.NoError(t, err)
	return db, reopen
}

func testMigrate(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	d := h.Dialect
	db, _ := h.Open(t)
	latest, err := migrations.Latest(d)
	require.NoError(t, err)
	require.Positive(t, latest)

	_, err = migrations.Current(ctx, db, d)
	require.ErrorIs(t, err, migrations.ErrNotMigrated, "a fresh database is not migrated")

	tablesUsable := func() error {
		_, err := db.ExecContext(ctx, `SELECT COUNT(*) FROM sqldlm_leases`)
		return d.ClassifyError(err)
	}
	for round := 1; round <= 2; round++ {
		_, err = migrations.Up(ctx, db, d)
		require.NoError(t, err, "up, round %d", round)
		v, err := migrations.Current(ctx, db, d)
		require.NoError(t, err)
		require.Equal(t, latest, v, "up, round %d: version", round)
		require.NoError(t, tablesUsable(), "up, round %d: tables exist", round)

		status, err := migrations.Status(ctx, db, d)
		require.NoError(t, err)
		require.Len(t, status, int(latest))
		for _, s := range status {
			require.Equal(t, "applied", string(s.State), s.Source.Path)
		}

		_, err = migrations.DownTo(ctx, db, d, 0)
		require.NoError(t, err, "down, round %d", round)
		v, err = migrations.Current(ctx, db, d)
		require.NoError(t, err, "the version table stays after down")
		require.Zero(t, v)
		require.ErrorIs(t, tablesUsable(), dialect.ErrUndefinedTable, "down, round %d: tables are gone", round)
	}
	_, err = migrations.Up(ctx, db, d)
	require.NoError(t, err, "up after down, down")
}

// Several migrators on their own pools start at once: all succeed, and
// each version is recorded exactly once. Without the migration lock they
// would race to create the same tables and some would fail.
func testMigrateConcurrently(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	d := h.Dialect
	first, reopen := h.Open(t)
	pools := []*sql.DB{first}
	for range 3 {
		pools = append(pools, reopen(t))
	}
	// Create the version table first, so that the migrators race on the
	// migrations themselves rather than on goose's version table (which goose
	// retries on its own).
	_, err := migrations.Status(ctx, first, d)
	require.NoError(t, err)
	start := make(chan struct{})
	errs := make([]error, len(pools))
	var wg sync.WaitGroup
	for i, db := range pools {
		wg.Go(func() {
			<-start
			_, errs[i] = migrations.Up(ctx, db, d)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "migrator %d", i)
	}
	latest, err := migrations.Latest(d)
	require.NoError(t, err)
	rows, err := first.QueryContext(ctx, `SELECT version_id, COUNT(*) FROM `+migrations.VersionTable+` GROUP BY version_id ORDER BY version_id`)
	require.NoError(t, err)
	defer rows.Close()
	var versions []int64
	for rows.Next() {
		var v, n int64
		require.NoError(t, rows.Scan(&v, &n))
		require.EqualValues(t, 1, n, "version %d recorded %d times", v, n)
		versions = append(versions, v)
	}
	require.NoError(t, rows.Err())
	require.Len(t, versions, int(latest)+1, "versions 0..%d", latest)
}

func testNow(t *testing.T, h Harness) {
	d := h.Dialect.(dialect.Testable)
	require.LessOrEqual(t, d.TimePrecision(), time.Millisecond, "expiry needs at least millisecond precision")

	t.Run("ReadsTheClockInUTC", func(t *testing.T) {
		t.Parallel()
		ctx := ctxFor(t)
		db, _ := migrated(t, h)
		now, err := d.Now(ctx, db)
		require.NoError(t, err)
		require.Equal(t, time.UTC, now.Location())
		// Same host: a time zone mistake would be off by half an hour or more.
		require.WithinDuration(t, time.Now(), now, time.Minute)
		require.Zero(t, now.Nanosecond()%int(d.TimePrecision()), "value has the declared precision")
	})

	t.Run("HasSubsecondPrecision", func(t *testing.T) {
		t.Parallel()
		ctx := ctxFor(t)
		db, _ := migrated(t, h)
		// Within 50 ms of readings (and at least 5 of them: on a loaded
		// machine one reading can take 20 ms), a clock of millisecond
		// precision shows several distinct values, and some not on a
		// whole second.
		seen := map[time.Time]bool{}
		fractional := false
		for n, deadline := 0, time.Now().Add(50*time.Millisecond); n < 5 || time.Now().Before(deadline); n++ {
			now, err := d.Now(ctx, db)
			require.NoError(t, err)
			seen[now] = true
			fractional = fractional || now.Nanosecond() != 0
		}
		require.GreaterOrEqual(t, len(seen), 3, "distinct readings in 50 ms")
		require.True(t, fractional)
	})

	t.Run("AdvancesInsideATransaction", func(t *testing.T) {
		t.Parallel()
		ctx := ctxFor(t)
		db, _ := migrated(t, h)
		tx, err := db.BeginTx(ctx, nil)
		require.NoError(t, err)
		defer tx.Rollback()
		first, err := d.Now(ctx, tx)
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			now, err := d.Now(ctx, tx)
			return err == nil && now.After(first)
		}, 5*time.Second, time.Millisecond, "Now must be the statement's time, not the transaction's start")
	})

	if poison, ok := sessionPoison[d.Name()]; ok {
		t.Run("IgnoresSessionSettings", func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t)
			db, _ := migrated(t, h)
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			for _, stmt := range poison {
				_, err := conn.ExecContext(ctx, stmt)
				require.NoError(t, err, stmt)
			}
			now, err := d.Now(ctx, conn)
			require.NoError(t, err)
			require.WithinDuration(t, time.Now(), now, time.Minute)
		})
	}
}

// sessionPoison holds session settings an application could leave on a
// pooled connection that must not move the library's clock.
var sessionPoison = map[string][]string{
	"postgres": {`SET TIME ZONE 'Pacific/Kiritimati'`},
	"mysql":    {`SET time_zone = '+13:00'`, `SET timestamp = 1000000000`},
}

// errorCases provoke each classified error on a real server.
type errorCase struct {
	kind error
	// provoke returns the driver's error for this case.
	provoke func(ctx context.Context, t *testing.T, db *sql.DB, reopen func(testing.TB) *sql.DB) error
}

func testClassifyError(t *testing.T, h Harness) {
	d := h.Dialect
	require.NoError(t, d.ClassifyError(nil))
	plain := errors.New("not a driver error")
	require.Same(t, plain, d.ClassifyError(plain), "unknown errors pass through")

	cases := map[string]errorCase{
		"UniqueViolation": {dialect.ErrUniqueViolation, func(ctx context.Context, t *testing.T, db *sql.DB, _ func(testing.TB) *sql.DB) error {
			insert := insertLease(d, 1)
			_, err := db.ExecContext(ctx, insert)
			require.NoError(t, err)
			_, err = db.ExecContext(ctx, insert)
			return err
		}},
		"UndefinedTable": {dialect.ErrUndefinedTable, func(ctx context.Context, _ *testing.T, db *sql.DB, _ func(testing.TB) *sql.DB) error {
			_, err := db.ExecContext(ctx, `SELECT * FROM sqldlm_no_such_table`)
			return err
		}},
		"LockTimeout": {dialect.ErrLockTimeout, func(ctx context.Context, t *testing.T, db *sql.DB, reopen func(testing.TB) *sql.DB) error {
			return provokeLockTimeout(ctx, t, d, db, reopen(t))
		}},
		"Connection": {dialect.ErrConnection, func(ctx context.Context, t *testing.T, db *sql.DB, _ func(testing.TB) *sql.DB) error {
			return provokeConnectionLoss(ctx, t, d, db)
		}},
	}
	if d.Name() != "sqlite" { // SQLite has one writer at a time: it reports BUSY, never a deadlock
		cases["Deadlock"] = errorCase{dialect.ErrDeadlock, func(ctx context.Context, t *testing.T, db *sql.DB, _ func(testing.TB) *sql.DB) error {
			return provokeDeadlock(ctx, t, d, db)
		}}
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			h.skipListed(t)
			t.Parallel()
			ctx := ctxFor(t)
			db, reopen := migrated(t, h)
			raw := c.provoke(ctx, t, db, reopen)
			require.Error(t, raw)
			err := d.ClassifyError(raw)
			require.ErrorIs(t, err, c.kind, "raw error: %v", raw)
			var de *dialect.Error
			require.ErrorAs(t, err, &de)
			require.Equal(t, raw.Error(), de.Message)
			require.Same(t, err, d.ClassifyError(err), "classifying twice changes nothing")
		})
	}
}

// insertLease returns an INSERT of a lease row with the given id.
func insertLease(d dialect.Dialect, id int) string {
	now := map[string]string{"postgres": "now()", "mysql": "SYSDATE(6)", "sqlite": "0"}[d.Name()]
	return fmt.Sprintf(`INSERT INTO sqldlm_leases (id, owner, ttl_us, created_at, renewed_at, expires_at) VALUES (%d, 'o', 1, %s, %s, %s)`,
		id, now, now, now)
}

// provokeLockTimeout holds a row lock in one transaction and makes a second
// connection, with a short lock timeout, wait for it.
func provokeLockTimeout(ctx context.Context, t *testing.T, d dialect.Dialect, db, other *sql.DB) error {
	_, err := db.ExecContext(ctx, insertLease(d, 1))
	require.NoError(t, err)
	holder, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer holder.Rollback()
	_, err = holder.ExecContext(ctx, `UPDATE sqldlm_leases SET ttl_us = 2 WHERE id = 1`)
	require.NoError(t, err)

	conn, err := other.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	setTimeout := map[string]string{
		"postgres": `SET lock_timeout = '50ms'`,
		"mysql":    `SET SESSION innodb_lock_wait_timeout = 1`,
		"sqlite":   `PRAGMA busy_timeout = 50`,
	}[d.Name()]
	_, err = conn.ExecContext(ctx, setTimeout)
	require.NoError(t, err)
	_, err = conn.ExecContext(ctx, `UPDATE sqldlm_leases SET ttl_us = 3 WHERE id = 1`)
	return err
}

// provokeDeadlock makes two transactions lock two rows in opposite orders.
func provokeDeadlock(ctx context.Context, t *testing.T, d dialect.Dialect, db *sql.DB) error {
	for _, id := range []int{1, 2} {
		_, err := db.ExecContext(ctx, insertLease(d, id))
		require.NoError(t, err)
	}
	a, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer a.Rollback()
	b, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer b.Rollback()
	lock := `UPDATE sqldlm_leases SET ttl_us = ttl_us + 1 WHERE id = %d`
	_, err = a.ExecContext(ctx, fmt.Sprintf(lock, 1))
	require.NoError(t, err)
	_, err = b.ExecContext(ctx, fmt.Sprintf(lock, 2))
	require.NoError(t, err)
	errs := make(chan error, 2)
	go func() { _, err := a.ExecContext(ctx, fmt.Sprintf(lock, 2)); errs <- err }()
	go func() { _, err := b.ExecContext(ctx, fmt.Sprintf(lock, 1)); errs <- err }()
	// The server picks one victim; the survivor's statement then completes.
	for range 2 {
		if err := <-errs; err != nil {
			return err
		}
	}
	t.Fatal("no transaction was chosen as a deadlock victim")
	return nil
}

// provokeConnectionLoss runs a statement on a connection the server has
// terminated (or, for SQLite, a closed pool).
func provokeConnectionLoss(ctx context.Context, t *testing.T, d dialect.Dialect, db *sql.DB) error {
	if d.Name() == "sqlite" { // in-process: no server to lose; a closed pool is the equivalent
		conn, err := db.Conn(ctx)
		require.NoError(t, err)
		require.NoError(t, conn.Close())
		_, err = conn.ExecContext(ctx, `SELECT 1`)
		return err
	}
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	var id int64
	idQuery := map[string]string{"postgres": `SELECT pg_backend_pid()`, "mysql": `SELECT CONNECTION_ID()`}[d.Name()]
	require.NoError(t, conn.QueryRowContext(ctx, idQuery).Scan(&id))
	kill := map[string]string{"postgres": `SELECT pg_terminate_backend(%d)`, "mysql": `KILL CONNECTION %d`}[d.Name()]
	_, err = db.ExecContext(ctx, fmt.Sprintf(kill, id))
	require.NoError(t, err)
	var one int
	return conn.QueryRowContext(ctx, `SELECT 1`).Scan(&one)
}
