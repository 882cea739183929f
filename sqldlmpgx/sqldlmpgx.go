// Package sqldlmpgx is sqldlm for services built on pgx: a Client over a
// *pgxpool.Pool, and Fence, ReleaseTx and TryLockTx in a pgx.Tx, with the
// semantics of their database/sql namesakes in package sqldlm.
//
//	pool, err := pgxpool.New(ctx, "postgres://app@db:5432/app?search_path=locks")
//	...
//	if err := sqldlmpgx.Migrate(ctx, pool); err != nil { ... }
//	c, err := sqldlmpgx.New(pool, sqldlm.Config{Owner: "conductor-3"})
//	...
//	defer c.Close()
//	l, err := c.Lock(ctx, "node/42", sqldlm.Exclusive)
//	...
//	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if err := sqldlmpgx.Fence(ctx, l, tx); err != nil {
//			return err // sqldlm.ErrLost: write nothing
//		}
//		_, err := tx.Exec(ctx, `UPDATE nodes SET state = 'deploying', token = $1 WHERE id = 42`, l.Token())
//		return err
//	})
//
// The client's lease renewals and wake-up listener run on connections of
// their own, opened with the pool's ConnConfig, so that the application's
// load on the pool cannot delay a renewal. (Those connections get the
// ConnConfig's settings, search_path among them, but not the pool's
// AfterConnect hook: set search_path in the DSN.)
package sqldlmpgx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/txbridge"
)

// HeartbeatConns is how many connections of its own a Client opens for its
// renewals and its listener (at most).
const HeartbeatConns = 3

// Client is a sqldlm.Client over a pgx pool: every method of
// sqldlm.Client, with TryLockTx taking a pgx.Tx.
type Client struct {
	*sqldlm.Client
	db *sql.DB // the pool, as database/sql
	hb *sql.DB // the connections of its own; nil when cfg gave one
}

// New returns a Client whose statements run on pool's connections, and
// whose renewals and listener run on up to HeartbeatConns connections of
// its own (unless cfg.HeartbeatDB names a pool for them). cfg.Dialect is
// PostgreSQL's. Close the Client before the pool.
func New(pool *pgxpool.Pool, cfg sqldlm.Config) (*Client, error) {
	if pool == nil {
		return nil, errors.New("sqldlmpgx: New needs a *pgxpool.Pool, got nil")
	}
	db := stdlib.OpenDBFromPool(pool)
	var hb *sql.DB
	if cfg.HeartbeatDB == nil {
		hb = stdlib.OpenDB(*pool.Config().ConnConfig)
		hb.SetMaxOpenConns(HeartbeatConns)
		cfg.HeartbeatDB = hb
	}
	if cfg.Dialect == nil {
		cfg.Dialect = postgres.Dialect()
	}
	c, err := sqldlm.New(db, cfg)
	if err != nil {
		db.Close()
		if hb != nil {
			hb.Close()
		}
		return nil, err
	}
	return &Client{Client: c, db: db, hb: hb}, nil
}

// Close closes the sqldlm.Client (releasing what it holds) and the
// connections it opened. It leaves the pool open. (Closing the embedded
// sqldlm.Client instead would leave those connections open.)
func (c *Client) Close() error {
	err := c.Client.Close()
	c.db.Close()
	if c.hb != nil {
		c.hb.Close()
	}
	return err
}

// TryLockTx is sqldlm.Client.TryLockTx in a pgx transaction: the lock is
// granted inside tx, pending until tx commits, and gone if tx rolls back.
// Run tx at READ COMMITTED. A pgx.Tx is not safe for concurrent use, and a
// Release of the lock while it is pending runs a statement in tx: release
// it from the goroutine that uses tx, or after tx has ended.
func (c *Client) TryLockTx(ctx context.Context, tx pgx.Tx, name string, mode sqldlm.Mode, opts ...sqldlm.LockOption) (*sqldlm.Lock, error) {
	if tx == nil {
		return nil, errors.New("sqldlmpgx: TryLockTx needs a transaction, got nil")
	}
	anyOpts := make([]any, len(opts))
	for i, o := range opts {
		anyOpts[i] = o
	}
	l, err := txbridge.TryLockTx(ctx, c.Client, pgxTx{tx}, name, mode, anyOpts)
	if err != nil {
		return nil, err
	}
	return l.(*sqldlm.Lock), nil
}

// Fence is sqldlm.Lock.Fence in a pgx transaction: it proves l is held and
// keeps it from being taken over until tx ends. sqldlm.ErrLost: roll tx
// back and write nothing.
func Fence(ctx context.Context, l *sqldlm.Lock, tx pgx.Tx) error {
	if tx == nil {
		return errors.New("sqldlmpgx: Fence needs the transaction whose writes it fences, got nil")
	}
	return txbridge.Fence(ctx, l, pgxTx{tx})
}

// ReleaseTx is sqldlm.Lock.ReleaseTx in a pgx transaction: l is released
// if and only if tx commits.
func ReleaseTx(ctx context.Context, l *sqldlm.Lock, tx pgx.Tx) error {
	if tx == nil {
		return errors.New("sqldlmpgx: ReleaseTx needs the transaction the release is to commit with, got nil")
	}
	return txbridge.ReleaseTx(ctx, l, pgxTx{tx})
}

// Migrate applies sqldlm's pending migrations through pool, as
// sqldlm.Migrate does through a *sql.DB.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	if pool == nil {
		return errors.New("sqldlmpgx: Migrate needs a *pgxpool.Pool, got nil")
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	return sqldlm.Migrate(ctx, db, postgres.Dialect())
}

// DialectTx adapts tx to dialect.Tx, as Fence, ReleaseTx and TryLockTx
// do, for code that calls a dialect.ForeignTxLocker itself (the
// conformance suite does). Two adapters of one pgx.Tx are equal.
func DialectTx(tx pgx.Tx) dialect.Tx { return pgxTx{tx} }

// pgxTx adapts a pgx.Tx to dialect.Tx.
type pgxTx struct{ tx pgx.Tx }

// TxKey names the transaction for sqldlm's "is this the acquiring
// transaction" check: the pgx.Tx itself when == can compare it, otherwise
// its connection (a connection runs one transaction at a time).
func (t pgxTx) TxKey() any {
	if reflect.TypeOf(t.tx).Comparable() {
		return t.tx
	}
	return t.tx.Conn()
}

func (t pgxTx) Exec(ctx context.Context, query string, args ...any) error {
	_, err := t.tx.Exec(ctx, query, args...)
	return txDone(err)
}

// Query asks for every result column in text format: the dialect scans
// arrays through pgtype's database/sql scanners, which read text.
func (t pgxTx) Query(ctx context.Context, query string, args ...any) (dialect.Rows, error) {
	rows, err := t.tx.Query(ctx, query, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, txDone(err)
	}
	return pgxRows{rows}, nil
}

func (t pgxTx) QueryRow(ctx context.Context, query string, args ...any) dialect.Row {
	return pgxRow{t.tx.QueryRow(ctx, query, args...)}
}

type pgxRow struct{ pgx.Row }

func (r pgxRow) Scan(dest ...any) error { return txDone(r.Row.Scan(dest...)) }

// txDone makes pgx's "transaction closed" match sql.ErrTxDone too, which is
// how sqldlm tells a transaction that has ended.
func txDone(err error) error {
	if errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("%w (%w)", err, sql.ErrTxDone)
	}
	return err
}

// pgxRows gives pgx.Rows the Close of database/sql.
type pgxRows struct{ pgx.Rows }

func (r pgxRows) Close() error {
	r.Rows.Close()
	return r.Rows.Err()
}
