// Command mysql is the README's MySQL/MariaDB walk-through: the PostgreSQL
// one with the go-sql-driver DSN a service already has.
//
//	go run ./examples/mysql 'app:secret@tcp(127.0.0.1:3306)/app'
package main

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"time"

	_ "github.com/go-sql-driver/mysql" // the "mysql" database/sql driver

	"github.com/sqldlm/sqldlm"
	_ "github.com/sqldlm/sqldlm/dialect/mysql" // sqldlm's MySQL/MariaDB dialect
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
	db, err := sql.Open("mysql", dsn) // no parseTime or other parameter needed
	if err != nil {
		return err
	}
	defer db.Close()
	if err := sqldlm.Migrate(ctx, db, nil); err != nil { // sqldlm's tables, in the DSN's database
		return err
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS stacks (id varchar(64) PRIMARY KEY, state text, written_by bigint)`); err != nil {
		return err
	}

	c, err := sqldlm.New(db, sqldlm.Config{Owner: "heat-engine-1", TTL: 15 * time.Second})
	if err != nil {
		return err
	}
	defer c.Close()

	l, err := c.Lock(ctx, "stack/7f3e", sqldlm.Exclusive)
	if err != nil {
		return err
	}
	defer l.Release(ctx)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := l.Fence(ctx, tx); err != nil { // ErrLost: write nothing
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO stacks VALUES ('7f3e', 'UPDATE_COMPLETE', ?)
		ON DUPLICATE KEY UPDATE state = VALUES(state), written_by = VALUES(written_by)`, l.Token()); err != nil {
		return err
	}
	if err := l.ReleaseTx(ctx, tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	fmt.Printf("stack 7f3e UPDATE_COMPLETE, written under lock token %d\n", l.Token())
	return nil
}
