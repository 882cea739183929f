package sqldlmpgx_test

import (
	"context"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/sqldlmpgx"
)

// A job enqueued and locked in one pgx transaction: if it rolls back,
// neither the job nor its lock exists. (Compiled, not run: it needs a
// server.)
func ExampleClient_TryLockTx() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@db.example:5432/app?search_path=locks")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	c, err := sqldlmpgx.New(pool, sqldlm.Config{Owner: "scheduler-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback(ctx)
	l, err := c.TryLockTx(ctx, tx, "job/17", sqldlm.Exclusive) // *sqldlm.LockedError if held
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)
	if _, err := tx.Exec(ctx, `INSERT INTO jobs (id, state) VALUES (17, 'queued')`); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil { // the job and its lock, together
		log.Fatal(err)
	}
}
