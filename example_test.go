package sqldlm_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite"

	"github.com/sqldlm/sqldlm"
	_ "github.com/sqldlm/sqldlm/dialect/sqlite" // registers the SQLite dialect for modernc.org/sqlite
)

// openExampleDB opens a fresh SQLite database in a temporary folder.
func openExampleDB() (*sql.DB, func()) {
	dir, err := os.MkdirTemp("", "sqldlm-example-")
	if err != nil {
		log.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "locks.db")+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)")
	if err != nil {
		log.Fatal(err)
	}
	if err := sqldlm.Migrate(context.Background(), db, nil); err != nil {
		log.Fatal(err)
	}
	return db, func() { db.Close(); os.RemoveAll(dir) }
}

func ExampleClient_Lock() {
	db, cleanup := openExampleDB()
	defer cleanup()
	ctx := context.Background()
	c, err := sqldlm.New(db, sqldlm.Config{Owner: "conductor-3"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l, err := c.Lock(ctx, "node/42", sqldlm.Exclusive)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("holding", l.Name(), l.Mode())

	_, err = c.TryLock(ctx, "node/42", sqldlm.Shared)
	var locked *sqldlm.LockedError
	if errors.As(err, &locked) {
		fmt.Println("try-lock refused: held by", locked.Owner, locked.Mode)
	}
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("released:", l.Err())
	// Output:
	// holding node/42 exclusive
	// try-lock refused: held by conductor-3 exclusive
	// released: sqldlm: lock released
}

func ExampleLock_Fence() {
	db, cleanup := openExampleDB()
	defer cleanup()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE volumes (id TEXT PRIMARY KEY, size INTEGER, written_by_token INTEGER)`); err != nil {
		log.Fatal(err)
	}
	c, err := sqldlm.New(db, sqldlm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	l, err := c.Lock(ctx, "volume/7", sqldlm.Exclusive)
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	if err := l.Fence(ctx, tx); err != nil {
		tx.Rollback() // lost: do not write, do not retry under this lock
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO volumes VALUES ('7', 100, ?)`, l.Token()); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("resized under the lock")
	// Output: resized under the lock
}

func ExampleLock_Upgrade() {
	db, cleanup := openExampleDB()
	defer cleanup()
	ctx := context.Background()
	c, err := sqldlm.New(db, sqldlm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	l, err := c.Lock(ctx, "stack/7", sqldlm.Shared)
	if err != nil {
		log.Fatal(err)
	}
	before := l.Token()
	if err := l.Upgrade(ctx); err != nil { // ErrUpgradeConflict if another holder is upgrading
		log.Fatal(err)
	}
	fmt.Println(l.Mode(), "with a new token:", l.Token() > before)
	// Output: exclusive with a new token: true
}

func ExampleClient_Do() {
	db, cleanup := openExampleDB()
	defer cleanup()
	c, err := sqldlm.New(db, sqldlm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	err = c.Do(context.Background(), "stack/7", sqldlm.Exclusive, func(ctx context.Context) error {
		// ctx is cancelled if the lock is lost.
		fmt.Println("updating the stack")
		return nil
	})
	fmt.Println("done:", err)
	// Output:
	// updating the stack
	// done: <nil>
}

// ExampleLock_ReleaseTx saves the final state and releases the lock in one
// transaction, as Heat's persist_state_and_release_lock does.
func ExampleLock_ReleaseTx() {
	db, cleanup := openExampleDB()
	defer cleanup()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE stacks (id TEXT PRIMARY KEY, status TEXT)`); err != nil {
		log.Fatal(err)
	}
	c, err := sqldlm.New(db, sqldlm.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	l, err := c.Lock(ctx, "stack/7", sqldlm.Exclusive)
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx) // a no-op after the commit below; releases after a rollback

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if err := l.Fence(ctx, tx); err != nil {
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO stacks VALUES ('7', 'CREATE_COMPLETE')`); err != nil {
		log.Fatal(err)
	}
	if err := l.ReleaseTx(ctx, tx); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil { // the state and the release, together
		log.Fatal(err)
	}
	locks, err := c.Locks(ctx, sqldlm.Filter{Prefix: "stack/"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("locks held after the commit:", len(locks))
	// Output: locks held after the commit: 0
}

// ExampleClient_TryLockTx creates a job and locks it in one transaction:
// no other worker can see the job without its lock, and a rollback leaves
// neither behind.
func ExampleClient_TryLockTx() {
	db, cleanup := openExampleDB()
	defer cleanup()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, `CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT)`); err != nil {
		log.Fatal(err)
	}
	c, err := sqldlm.New(db, sqldlm.Config{Owner: "api-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// READ COMMITTED is what PostgreSQL and MySQL need; SQLite ignores it.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	l, err := c.TryLockTx(ctx, tx, "job/17", sqldlm.Exclusive, sqldlm.WithPayload("created"))
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(ctx)
	if _, err := tx.ExecContext(ctx, `INSERT INTO jobs VALUES ('17', 'new')`); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil { // the job and its lock, together
		log.Fatal(err)
	}
	locks, err := c.Locks(ctx, sqldlm.Filter{Prefix: "job/"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(locks[0].Name, locks[0].Holders[0].Owner, locks[0].Holders[0].Payload)
	// Output: job/17 api-1 created
}

// A semaphore lets at most 2 clients drive BMCs at once; a third is
// refused by TryAcquire (Acquire would wait its turn).
func ExampleSemaphore() {
	db, cleanup := openExampleDB()
	defer cleanup()
	ctx := context.Background()
	c, err := sqldlm.New(db, sqldlm.Config{Owner: "conductor-3"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	s := c.Semaphore("ipmi-slots", 2)
	p1, err := s.Acquire(ctx)
	if err != nil {
		log.Fatal(err)
	}
	p2, err := s.Acquire(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("permits on slots", p1.Slot(), p2.Slot())
	_, err = s.TryAcquire(ctx)
	var locked *sqldlm.LockedError
	if errors.As(err, &locked) {
		fmt.Println("full: a permit is held by", locked.Owner)
	}
	_, err = c.Semaphore("ipmi-slots", 4).TryAcquire(ctx)
	fmt.Println("another limit:", errors.Is(err, sqldlm.ErrLimitMismatch))
	p1.Release(ctx)
	p2.Release(ctx)
	// Output:
	// permits on slots 0 1
	// full: a permit is held by conductor-3
	// another limit: true
}
