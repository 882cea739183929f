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
	ctx := context.Background()
	db, err := sql.Open("mysql", os.Args[1]) // no parseTime or other parameter needed
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := sqldlm.Migrate(ctx, db, nil); err != nil { // sqldlm's tables, in the DSN's database
		log.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS stacks (id varchar(64) PRIMARY KEY, state text, written_by bigint)`); err != nil {
		log.Fatal(err)
	}

	c, err := sqldlm.New(db, sqldlm.Config{Owner: "heat-engine-1", TTL: 15 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l, err := c.Lock(ctx, "stack/7f3e", sqldlm.Exclusive)
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if err := l.Fence(ctx, tx); err != nil { // ErrLost: write nothing
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO stacks VALUES ('7f3e', 'UPDATE_COMPLETE', ?)
		ON DUPLICATE KEY UPDATE state = VALUES(state), written_by = VALUES(written_by)`, l.Token()); err != nil {
		log.Fatal(err)
	}
	if err := l.ReleaseTx(ctx, tx); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("stack 7f3e UPDATE_COMPLETE, written under lock token %d\n", l.Token())
}
