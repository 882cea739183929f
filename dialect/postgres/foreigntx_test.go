package postgres_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/dialecttest"
	"github.com/sqldlm/sqldlm/sqldlmpgx"
)

// The in-transaction cases of the conformance suite, in pgx transactions:
// the path package sqldlmpgx takes.
func TestConformanceForeignTx(t *testing.T) {
	t.Parallel()
	dialecttest.ExerciseForeignTx(t, harness(), beginPgx)
}

// beginPgx begins a pgx transaction on a connection of db's pool (pgx's
// own connection inside database/sql's), kept out of the pool until the
// transaction ends.
func beginPgx(t testing.TB, db *sql.DB, readCommitted bool) dialecttest.ForeignTx {
	t.Helper()
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	var tx pgx.Tx
	opts := pgx.TxOptions{}
	if readCommitted {
		opts.IsoLevel = pgx.ReadCommitted
	}
	require.NoError(t, conn.Raw(func(dc any) error {
		var err error
		tx, err = dc.(*stdlib.Conn).Conn().BeginTx(ctx, opts)
		return err
	}))
	f := &pgxForeignTx{Tx: sqldlmpgx.DialectTx(tx), tx: tx, conn: conn}
	t.Cleanup(func() { _ = f.Rollback(context.Background()) })
	return f
}

// pgxForeignTx is a pgx.Tx as sqldlmpgx adapts it, with its ends.
type pgxForeignTx struct {
	dialect.Tx
	tx   pgx.Tx
	conn *sql.Conn
}

func (f *pgxForeignTx) Commit(ctx context.Context) error {
	defer f.conn.Close()
	return f.tx.Commit(ctx)
}

func (f *pgxForeignTx) Rollback(ctx context.Context) error {
	defer f.conn.Close()
	err := f.tx.Rollback(ctx)
	if err == pgx.ErrTxClosed {
		return nil
	}
	return err
}
