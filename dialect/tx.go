package dialect

import (
	"context"
	"database/sql"
	"time"
)

// Tx is a caller's transaction as [ForeignTxLocker] runs statements in it:
// a transaction of a driver other than database/sql (package sqldlmpgx
// adapts pgx.Tx), or a *sql.Tx through [SQLTx].
type Tx interface {
	Exec(ctx context.Context, query string, args ...any) error
	Query(ctx context.Context, query string, args ...any) (Rows, error)
	QueryRow(ctx context.Context, query string, args ...any) Row
}

// Row is one result row of [Tx.QueryRow].
type Row interface {
	Scan(dest ...any) error
}

// Rows are the result rows of [Tx.Query].
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

// ForeignTxLocker is implemented by a dialect whose operations in the
// caller's transaction also take a [Tx]: each is its [Locker] namesake,
// with the same contract.
type ForeignTxLocker interface {
	AcquireIn(ctx context.Context, tx Tx, p *AcquireParams) (*AcquireResult, error)
	ReleaseIn(ctx context.Context, db *sql.DB, tx Tx, p *HoldRef) (bool, error)
	FenceIn(ctx context.Context, db *sql.DB, tx Tx, p *HoldRef, idleTimeout time.Duration) (bool, error)
}

// SQLTx adapts a *sql.Tx to [Tx]. Two adapters of one *sql.Tx are equal.
func SQLTx(tx *sql.Tx) Tx { return sqlTx{tx} }

type sqlTx struct{ tx *sql.Tx }

func (t sqlTx) Exec(ctx context.Context, query string, args ...any) error {
	_, err := t.tx.ExecContext(ctx, query, args...)
	return err
}

func (t sqlTx) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	rows, err := t.tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return rows, nil
}

func (t sqlTx) QueryRow(ctx context.Context, query string, args ...any) Row {
	return t.tx.QueryRowContext(ctx, query, args...)
}
