// Command postgres is the README's PostgreSQL walk-through: a conductor
// that locks a node, writes under the lock with a fenced transaction, and
// releases the lock with the same commit.
//
//	go run ./examples/postgres 'postgres://app@127.0.0.1:5432/app?search_path=locks'
package main

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/sqldlm/sqldlm"
	_ "github.com/sqldlm/sqldlm/dialect/postgres" // sqldlm's PostgreSQL dialect
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
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	// sqldlm's tables go to the first schema of search_path (create it
	// first: CREATE SCHEMA locks). Migrate is idempotent and safe from any
	// number of processes at once; `sqldlm migrate up` does the same.
	if err := sqldlm.Migrate(ctx, db, nil); err != nil {
		return err
	}
	// The application's own table, for the example.
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS nodes (id int PRIMARY KEY, state text, written_by bigint)`); err != nil {
		return err
	}

	c, err := sqldlm.New(db, sqldlm.Config{Owner: "conductor-1", TTL: 15 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close() // releases whatever the client still holds

	l, err := c.Lock(ctx, "node/42", sqldlm.Exclusive) // waits until granted or ctx ends
	if err != nil {
		return err
	}
	defer l.Release(ctx) // after ReleaseTx's commit it does nothing; after a rollback it releases

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// Fence proves the lock is still held, and keeps it from being taken
	// over, until tx ends: an ErrLost here means another conductor may hold
	// node/42 now, so write nothing.
	if err := l.Fence(ctx, tx); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO nodes VALUES (42, 'deploying', $1)
		ON CONFLICT (id) DO UPDATE SET state = excluded.state, written_by = excluded.written_by`, l.Token()); err != nil {
		return err
	}
	if err := l.ReleaseTx(ctx, tx); err != nil { // released if and only if tx commits
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	fmt.Printf("node 42 deploying, written under lock token %d\n", l.Token())
	return nil
}
