package bench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/pgconn"
)

// A family is what the benchmark needs to know of one dialect: the SQL of
// its floors, how to read its server's settings, and the names of its
// server's processes. Each lives in floor_<dialect>.go.
type family struct {
	// The two-commit floor: a table of lock rows. Acquire inserts the row
	// (name, owner) unless it exists, reporting one affected row when it
	// did; release deletes it. Both run in autocommit: one commit each.
	createFloor, dropFloor string
	floorAcquire           string // args: name, owner
	floorRelease           string // args: name, owner
	floorPrimitive         string // for the report
	// floorOneConn runs the floor on one connection (SQLite: one writer,
	// so more connections only wait on the file lock).
	floorOneConn bool

	// vacuum, run before each cell with Config.Vacuum, cleans out the dead
	// rows of sqldlm's tables and the floor's; "" where the database needs
	// no help.
	vacuum string

	// advisory is the dialect's non-durable session lock, nil if it has none.
	advisory *advisory

	// settings reads the server's version and the settings that decide
	// commit cost.
	settings func(ctx context.Context, db *sql.DB) (version string, settings map[string]string, err error)

	// serverProcs are the command names (/proc/PID/comm) of the server's
	// processes; none for an embedded database.
	serverProcs []string
	// backendTitles: the server's client backends show their database in
	// their process title (PostgreSQL), so those of other databases are
	// left out of the CPU count.
	backendTitles bool
}

// advisory is a session-level lock held by a connection.
type advisory struct {
	lock, unlock             string // one argument: key(name)
	lockShared, unlockShared string // "" when there is no shared mode
	key                      func(name string) any
	primitive                string
	primitiveShared          string
}

var families = map[string]*family{
	"postgres": &postgresFamily,
	"mysql":    &mysqlFamily,
	"sqlite":   &sqliteFamily,
}

// The floors prepare their statements once per cell, as sqldlm's MySQL
// dialect does (go-sql-driver would otherwise prepare each execution: a
// second round trip); pgx caches prepared statements by itself.

// Polling bounds of the two-commit floor's waiters: the same capped
// exponential backoff with jitter as sqldlm's polling waiters, so that on a
// hot name the two differ in what they send, not in how often they ask.
const (
	floorPollMin = 2 * time.Millisecond
	floorPollMax = 200 * time.Millisecond
)

// twoCommitWorker takes a lock by inserting its row and releases it by
// deleting the row; a waiter polls with capped exponential backoff.
type twoCommitWorker struct {
	acquire *sql.Stmt // f.floorAcquire, prepared on the pool
	release *sql.Stmt // f.floorRelease
	name    string
	owner   int64
	nextGap time.Duration
}

func (w *twoCommitWorker) lock(ctx context.Context) error {
	w.nextGap = floorPollMin
	for {
		res, err := w.acquire.ExecContext(ctx, w.name, w.owner)
		var n int64
		switch {
		case conflict(err):
			// A certification conflict (Galera, two nodes inserting one
			// name) or a deadlock: not granted, ask again, as sqldlm does.
		case err != nil:
			return fmt.Errorf("insert lock row: %w", err)
		default:
			if n, err = res.RowsAffected(); err != nil {
				return err
			}
		}
		if n > 0 {
			return nil
		}
		d := w.nextGap
		w.nextGap = min(w.nextGap*2, floorPollMax)
		d = d/2 + rand.N(d/2+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (w *twoCommitWorker) unlock(ctx context.Context) error {
	res, err := w.release.ExecContext(ctx, w.name, w.owner)
	for attempt := 0; conflict(err) && attempt < 10; attempt++ {
		res, err = w.release.ExecContext(ctx, w.name, w.owner) // a conflict rolled the delete back: again
	}
	if err != nil {
		return fmt.Errorf("delete lock row: %w", err)
	}
	if n, err := res.RowsAffected(); err == nil && n != 1 {
		return fmt.Errorf("delete lock row %q: %d rows deleted, want 1", w.name, n)
	}
	return nil
}

// advisoryWorker holds a session lock on a connection of its own.
type advisoryWorker struct {
	lockS, unlockS *sql.Stmt // prepared on the worker's connection
	key            any
}

func (w *advisoryWorker) lock(ctx context.Context) error {
	var got sql.NullInt64
	if err := w.lockS.QueryRowContext(ctx, w.key).Scan(&got); err != nil {
		return fmt.Errorf("advisory lock: %w", err)
	}
	if got.Valid && got.Int64 != 1 {
		return fmt.Errorf("advisory lock: got %d, want 1", got.Int64)
	}
	return nil
}

func (w *advisoryWorker) unlock(ctx context.Context) error {
	var ok sql.NullBool
	if err := w.unlockS.QueryRowContext(ctx, w.key).Scan(&ok); err != nil {
		return fmt.Errorf("advisory unlock: %w", err)
	}
	if !ok.Bool {
		return fmt.Errorf("advisory unlock: the lock was not held")
	}
	return nil
}

// conflict reports whether err is a deadlock or a Galera certification
// conflict (MySQL 1213, lock wait timeout 1205; PostgreSQL 40001, 40P01),
// after which the statement was rolled back and may be sent again.
func conflict(err error) bool {
	var my *mysql.MySQLError
	var pg *pgconn.PgError
	switch {
	case err == nil:
		return false
	case errors.As(err, &my):
		return my.Number == 1213 || my.Number == 1205
	case errors.As(err, &pg):
		return pg.Code == "40001" || pg.Code == "40P01"
	}
	return false
}
