package sqldlmpgx_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/sqldlmpgx"
)

// env is one test's schema, a pgx pool on it and a way to make clients.
type env struct {
	t    *testing.T
	ctx  context.Context
	db   *testdb.DB
	pool *pgxpool.Pool
}

func newEnv(t *testing.T) *env {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	db := testdb.Open(t, testdb.Postgres)
	pool, err := pgxpool.New(ctx, db.DSN)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.NoError(t, sqldlmpgx.Migrate(ctx, pool))
	_, err = pool.Exec(ctx, `CREATE TABLE nodes (id int PRIMARY KEY, written_by bigint)`)
	require.NoError(t, err)
	return &env{t: t, ctx: ctx, db: db, pool: pool}
}

// begin starts a transaction that is rolled back at the end of the test if
// it is still open (an open one would keep pool.Close waiting).
func (e *env) begin(opts pgx.TxOptions) pgx.Tx {
	tx, err := e.pool.BeginTx(e.ctx, opts)
	require.NoError(e.t, err)
	e.t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

func (e *env) client(owner string) *sqldlmpgx.Client {
	c, err := sqldlmpgx.New(e.pool, sqldlm.Config{Owner: owner, TTL: 2 * time.Second})
	require.NoError(e.t, err)
	e.t.Cleanup(func() { c.Close() })
	return c
}

// freeFor reports whether owner can take name at once.
func (e *env) freeFor(c *sqldlmpgx.Client, name string) bool {
	l, err := c.TryLock(e.ctx, name, sqldlm.Exclusive)
	if errors.Is(err, sqldlm.ErrLocked) {
		return false
	}
	require.NoError(e.t, err)
	require.NoError(e.t, l.Release(e.ctx))
	return true
}

// A fenced write and its release commit together in a pgx.Tx; after a
// rollback the lock is still held.
func TestFenceAndReleaseTx(t *testing.T) {
	e := newEnv(t)
	a, b := e.client("a"), e.client("b")
	l, err := a.Lock(e.ctx, "node/1", sqldlm.Exclusive)
	require.NoError(t, err)

	tx := e.begin(pgx.TxOptions{})
	require.NoError(t, sqldlmpgx.Fence(e.ctx, l, tx))
	_, err = tx.Exec(e.ctx, `INSERT INTO nodes VALUES (1, $1)`, l.Token())
	require.NoError(t, err)
	require.NoError(t, sqldlmpgx.ReleaseTx(e.ctx, l, tx))
	require.NoError(t, tx.Rollback(e.ctx))
	require.False(t, e.freeFor(b, "node/1"), "a rolled-back ReleaseTx releases nothing")
	require.NoError(t, l.Err())

	err = pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
		if err := sqldlmpgx.Fence(e.ctx, l, tx); err != nil {
			return err
		}
		if _, err := tx.Exec(e.ctx, `INSERT INTO nodes VALUES (1, $1)`, l.Token()); err != nil {
			return err
		}
		return sqldlmpgx.ReleaseTx(e.ctx, l, tx)
	})
	require.NoError(t, err)
	require.True(t, e.freeFor(b, "node/1"), "the release committed with the write")
	var written int64
	require.NoError(t, e.pool.QueryRow(e.ctx, `SELECT written_by FROM nodes WHERE id = 1`).Scan(&written))
	require.Equal(t, l.Token(), written)
	require.NoError(t, l.Release(e.ctx), "Release after a committed ReleaseTx does nothing")
}

// A Fence in an open pgx.Tx keeps a broken holder's lock from being taken
// over until the transaction ends; a Fence after the break is refused.
func TestFenceHoldsOffTakeover(t *testing.T) {
	e := newEnv(t)
	a, b := e.client("a"), e.client("b")
	l, err := a.Lock(e.ctx, "node/2", sqldlm.Exclusive)
	require.NoError(t, err)
	tx := e.begin(pgx.TxOptions{})
	require.NoError(t, sqldlmpgx.Fence(e.ctx, l, tx))

	admin, err := sqldlm.NewAdmin(e.db.DB, sqldlm.AdminConfig{})
	require.NoError(t, err)
	broken, err := admin.Break(e.ctx, "node/2", "")
	require.NoError(t, err)
	require.Len(t, broken, 1)

	wctx, cancel := context.WithTimeout(e.ctx, 500*time.Millisecond)
	_, err = b.Lock(wctx, "node/2", sqldlm.Exclusive)
	cancel()
	require.ErrorIs(t, err, context.DeadlineExceeded, "no takeover while the fenced transaction is open")
	require.NoError(t, tx.Commit(e.ctx))
	got, err := b.Lock(e.ctx, "node/2", sqldlm.Exclusive)
	require.NoError(t, err, "taken over once it ended")
	require.Greater(t, got.Token(), l.Token())

	tx2 := e.begin(pgx.TxOptions{})
	require.ErrorIs(t, sqldlmpgx.Fence(e.ctx, l, tx2), sqldlm.ErrLost)
}

// TryLockTx in a pgx.Tx: pending until the commit, gone after a rollback,
// refused (with the holder) when held, and refused with pgx advice above
// READ COMMITTED. A grant that takes over a dead holder reports it.
func TestTryLockTx(t *testing.T) {
	e := newEnv(t)
	a, b := e.client("a"), e.client("b")

	tx := e.begin(pgx.TxOptions{})
	l, err := a.TryLockTx(e.ctx, tx, "job/1", sqldlm.Exclusive)
	require.NoError(t, err)
	require.NoError(t, sqldlmpgx.Fence(e.ctx, l, tx), "a pending lock fences in its own transaction")
	require.NoError(t, tx.Commit(e.ctx))
	require.False(t, e.freeFor(b, "job/1"))
	require.NoError(t, l.Err())
	require.NoError(t, l.Release(e.ctx))

	tx = e.begin(pgx.TxOptions{})
	l, err = a.TryLockTx(e.ctx, tx, "job/2", sqldlm.Exclusive)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(e.ctx))
	select {
	case <-l.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the rolled-back lock's Done did not close")
	}
	require.ErrorIs(t, l.Err(), sqldlm.ErrNotCommitted)
	require.True(t, e.freeFor(b, "job/2"))

	held, err := b.Lock(e.ctx, "job/3", sqldlm.Exclusive, sqldlm.WithPayload("step 1"))
	require.NoError(t, err)
	tx = e.begin(pgx.TxOptions{})
	_, err = a.TryLockTx(e.ctx, tx, "job/3", sqldlm.Exclusive)
	var le *sqldlm.LockedError
	require.ErrorAs(t, err, &le)
	require.Equal(t, "b", le.Owner)
	require.NoError(t, tx.Rollback(e.ctx))

	// b's lease broken: a's grant takes its hold over, and says so.
	admin, err := sqldlm.NewAdmin(e.db.DB, sqldlm.AdminConfig{})
	require.NoError(t, err)
	_, err = admin.Break(e.ctx, "job/3", "b")
	require.NoError(t, err)
	tx = e.begin(pgx.TxOptions{})
	l, err = a.TryLockTx(e.ctx, tx, "job/3", sqldlm.Exclusive)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(e.ctx))
	// Unless b's client learned of the break first (a renewal refused)
	// and deleted its lease, hold and all: then there was nothing to take
	// over (seen once under the suite's load).
	if to := l.Takeover(); to != nil || !bGone(t, e, "b") {
		require.NotNil(t, to)
		require.Equal(t, "b", to.Owner)
		require.Equal(t, held.Token(), to.Token)
		require.Equal(t, "step 1", to.Payload)
	}

	tx = e.begin(pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	_, err = a.TryLockTx(e.ctx, tx, "job/4", sqldlm.Exclusive)
	require.ErrorContains(t, err, "run the transaction at READ COMMITTED (pgx.TxOptions{IsoLevel: pgx.ReadCommitted})")
	require.NoError(t, tx.Rollback(e.ctx))

	_, err = a.TryLockTx(e.ctx, nil, "job/5", sqldlm.Exclusive)
	require.ErrorContains(t, err, "needs a transaction")
	require.ErrorContains(t, sqldlmpgx.Fence(e.ctx, l, nil), "needs the transaction")
	require.ErrorContains(t, sqldlmpgx.ReleaseTx(e.ctx, l, nil), "needs the transaction")
}

// At REPEATABLE READ a snapshot older than the grant gets a serialization
// error, as with database/sql, not a false ErrLost.
func TestFenceOldSnapshot(t *testing.T) {
	e := newEnv(t)
	a := e.client("a")
	tx := e.begin(pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	var one int
	require.NoError(t, tx.QueryRow(e.ctx, `SELECT 1`).Scan(&one)) // takes the snapshot
	l, err := a.Lock(e.ctx, "node/3", sqldlm.Exclusive)
	require.NoError(t, err)
	err = sqldlmpgx.Fence(e.ctx, l, tx)
	require.NotErrorIs(t, err, sqldlm.ErrLost)
	require.ErrorContains(t, err, "retry the transaction")
	require.NoError(t, l.Err())
}

// The application holding every connection of its pool for three TTLs
// costs no lease: renewals run on the client's own connections.
func TestRenewalsDoNotWaitForThePool(t *testing.T) {
	e := newEnv(t)
	cfg, err := pgxpool.ParseConfig(e.db.DSN)
	require.NoError(t, err)
	cfg.MaxConns = 2
	small, err := pgxpool.NewWithConfig(e.ctx, cfg)
	require.NoError(t, err)
	defer small.Close()
	c, err := sqldlmpgx.New(small, sqldlm.Config{TTL: time.Second})
	require.NoError(t, err)
	defer c.Close()
	l, err := c.Lock(e.ctx, "node/4", sqldlm.Exclusive)
	require.NoError(t, err)
	for range cfg.MaxConns {
		conn, err := small.Acquire(e.ctx)
		require.NoError(t, err)
		defer conn.Release()
	}
	select {
	case <-l.Done():
		t.Fatalf("lost while the application held the pool: %v", l.Err())
	case <-time.After(3 * time.Second): // the fault's length, not synchronisation
	}
	require.NoError(t, l.Err())
}

// uncomparable is an application's own pgx.Tx wrapper of a type == cannot
// compare (a slice field): sqldlm must still recognise its transaction.
type uncomparable struct {
	pgx.Tx
	tags []string
}

func TestTryLockTxInUncomparableTx(t *testing.T) {
	e := newEnv(t)
	a := e.client("a")
	tx := uncomparable{Tx: e.begin(pgx.TxOptions{}), tags: []string{"request-17"}}
	l, err := a.TryLockTx(e.ctx, tx, "job/9", sqldlm.Exclusive)
	require.NoError(t, err)
	require.NoError(t, sqldlmpgx.Fence(e.ctx, l, tx), "the pending lock fences in its own transaction")
	require.NoError(t, tx.Commit(e.ctx))
	require.NoError(t, l.Release(e.ctx))
}

// bGone reports whether no lease of owner is left.
func bGone(t *testing.T, e *env, owner string) bool {
	t.Helper()
	var n int
	require.NoError(t, e.db.QueryRowContext(e.ctx, `SELECT COUNT(*) FROM sqldlm_leases WHERE owner = $1`, owner).Scan(&n))
	return n == 0
}
