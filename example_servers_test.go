package sqldlm_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"

	_ "github.com/go-sql-driver/mysql" // registers "mysql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/dialect/sqlite"
)

// A PostgreSQL service: pgx's database/sql driver, sqldlm's tables in their
// own schema (search_path), and a write fenced by the lock and committed
// together with its release. (Compiled, not run: it needs a server.)
func Example_postgreSQL() {
	ctx := context.Background()
	db, err := sql.Open("pgx", "postgres://app:secret@db.example:5432/app?search_path=locks&sslmode=require")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := sqldlm.Migrate(ctx, db, nil); err != nil { // or `sqldlm migrate up` at deploy time
		log.Fatal(err)
	}
	c, err := sqldlm.New(db, sqldlm.Config{Owner: "conductor-3"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l, err := c.Lock(ctx, "node/42", sqldlm.Exclusive)
	if err != nil {
		log.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if err := l.Fence(ctx, tx); err != nil { // ErrLost: another client may hold node/42 now
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE public.nodes SET provision_state = 'deploying', token = $1 WHERE id = 42`, l.Token()); err != nil {
		log.Fatal(err)
	}
	if err := l.ReleaseTx(ctx, tx); err != nil { // released if and only if tx commits
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
}

// A MySQL or MariaDB service, with the go-sql-driver DSN it already has
// (no parseTime or other parameter is needed). (Compiled, not run: it
// needs a server.)
func Example_mySQL() {
	ctx := context.Background()
	db, err := sql.Open("mysql", "app:secret@tcp(db.example:3306)/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	c, err := sqldlm.New(db, sqldlm.Config{Owner: "heat-engine-2"}) // after `sqldlm migrate up --dsn 'app:secret@tcp(db.example:3306)/app'`
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	err = c.Do(ctx, "stack/7f3e", sqldlm.Exclusive, func(ctx context.Context) error {
		// ctx ends (cause sqldlm.ErrLost) if the lock is lost: stop work
		// that is no longer protected.
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Dialects print as their names; Config.Dialect takes one when the driver
// cannot be detected (a wrapped driver, a pool from another library).
func ExampleConfig_dialect() {
	fmt.Println(postgres.Dialect(), mysql.Dialect(), sqlite.Dialect())
	// Output: postgres mysql sqlite
}
