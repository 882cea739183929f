// Command pgx is the README's walk-through for a service built on pgx: the
// PostgreSQL one over a *pgxpool.Pool, fencing and releasing in a pgx.Tx.
//
//	go run ./examples/pgx 'postgres://app@127.0.0.1:5432/app?search_path=locks'
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/sqldlmpgx"
)

func main() {
	if len(os.Args) != 2 {
		log.Fatalf("usage: %s DSN", os.Args[0])
	}
	// run returns its errors, so that its deferred Release and Close run:
	// log.Fatal inside it would exit with the lock held until the TTL ends.
	if err := run(context.Background(), os.Args[1]); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, dsn string) error {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := sqldlmpgx.Migrate(ctx, pool); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS nodes (id int PRIMARY KEY, state text, written_by bigint)`); err != nil {
		return err
	}

	// Renewals run on connections of the client's own: the application's
	// load on pool cannot delay them.
	c, err := sqldlmpgx.New(pool, sqldlm.Config{Owner: "conductor-2", TTL: 15 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()

	l, err := c.Lock(ctx, "node/42", sqldlm.Exclusive)
	if err != nil {
		return err
	}
	defer l.Release(ctx)

	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := sqldlmpgx.Fence(ctx, l, tx); err != nil { // sqldlm.ErrLost: write nothing
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO nodes VALUES (42, 'active', $1)
			ON CONFLICT (id) DO UPDATE SET state = excluded.state, written_by = excluded.written_by`, l.Token()); err != nil {
			return err
		}
		return sqldlmpgx.ReleaseTx(ctx, l, tx) // released if and only if tx commits
	})
	if err != nil {
		return err
	}
	fmt.Printf("node 42 active, written under lock token %d\n", l.Token())
	return nil
}
