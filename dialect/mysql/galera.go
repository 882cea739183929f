package mysql

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// The cluster-wide migration lock of a Galera cluster (HA-2026-12 G2):
// GET_LOCK is local to one node, so two migrators on two nodes would both
// hold it. Instead, sqldlm_migration_lock has one row; a migrator claims it
// with UPDATE ... WHERE holder = ” and the claim is certified like any
// write, so of two claims on two nodes at most one commits (the other fails
// certification with 1213, or, retried, finds the row taken).
//
// Staleness: the holder bumps beat every migrationLockBeat from another
// connection of its pool. A waiter that sees the same (holder, beat) for
// migrationLockStale by its own clock takes the lock over with a compare
// and swap on both, so a migrator that died does not block the database.
// A holder that was alive but starved that long (or that has no pool to
// beat from, and migrates for longer than that) learns at unlock that its
// lock was taken over, and its Migrate fails.
const migrationLockTable = "sqldlm_migration_lock"

var (
	migrationLockBeat  = 2 * time.Second
	migrationLockStale = 60 * time.Second
	migrationLockPoll  = 100 * time.Millisecond
)

// wsrepOn reports whether conn's writes replicate through Galera.
func (d mysqlDialect) wsrepOn(ctx context.Context, conn dialect.Querier) (bool, error) {
	var name, value string
	err := conn.QueryRowContext(ctx, `SHOW VARIABLES LIKE 'wsrep_on'`).Scan(&name, &value)
	if errors.Is(err, sql.ErrNoRows) { // MySQL, or MariaDB built without wsrep
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read wsrep_on: %w", d.ClassifyError(err))
	}
	return strings.EqualFold(value, "ON") || value == "1", nil
}

func (d mysqlDialect) lockMigrationsCluster(ctx context.Context, db *sql.DB, conn *sql.Conn, database string) (func(context.Context) error, error) {
	fail := func(err error) (func(context.Context) error, error) {
		return nil, fmt.Errorf("lock database %q for migration (Galera): %w", database, d.ClassifyError(err))
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	me := hex.EncodeToString(b[:])
	setup := []string{
		`CREATE TABLE IF NOT EXISTS ` + migrationLockTable + ` (
			id     TINYINT        NOT NULL PRIMARY KEY,
			holder VARBINARY(64)  NOT NULL,   -- '' when free
			beat   BIGINT         NOT NULL    -- bumped by the holder while it migrates
		) ENGINE=InnoDB`,
		`INSERT IGNORE INTO ` + migrationLockTable + ` (id, holder, beat) VALUES (1, '', 0)`,
	}
	var seenHolder string
	var seenBeat int64
	var seenSince time.Time
	for step := 0; ; {
		var err error
		var claimed bool
		if step < len(setup) {
			if _, err = conn.ExecContext(ctx, setup[step]); err == nil {
				step++
				continue
			}
		} else {
			claimed, err = execOne(ctx, conn, `UPDATE `+migrationLockTable+` SET holder = ?, beat = 0 WHERE id = 1 AND holder = ''`, me)
			if err == nil && !claimed {
				var holder string
				var beat int64
				err = conn.QueryRowContext(ctx, `SELECT holder, beat FROM `+migrationLockTable+` WHERE id = 1`).Scan(&holder, &beat)
				switch {
				case err != nil:
				case holder != seenHolder || beat != seenBeat || seenSince.IsZero():
					seenHolder, seenBeat, seenSince = holder, beat, time.Now()
				case time.Since(seenSince) >= migrationLockStale:
					claimed, err = execOne(ctx, conn, `UPDATE `+migrationLockTable+` SET holder = ?, beat = 0 WHERE id = 1 AND holder = ? AND beat = ?`, me, holder, beat)
				}
			}
		}
		if claimed {
			break
		}
		// A conflict with another node's write (1213: certification or a
		// brute-force abort by DDL) is retried; anything else is an error.
		if err != nil && !errors.Is(d.ClassifyError(err), dialect.ErrDeadlock) {
			return fail(err)
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(migrationLockPoll):
		}
	}

	stop, beaten := make(chan struct{}), make(chan error, 1)
	var once sync.Once
	if db != nil {
		go func() {
			t := time.NewTicker(migrationLockBeat)
			defer t.Stop()
			for {
				select {
				case <-stop:
					beaten <- nil
					return
				case <-t.C:
				}
				bctx, cancel := context.WithTimeout(context.Background(), migrationLockBeat)
				ours, err := execOne(bctx, db, `UPDATE `+migrationLockTable+` SET beat = beat + 1 WHERE id = 1 AND holder = ?`, me)
				cancel()
				if err == nil && !ours {
					beaten <- errors.New("another migrator found this one's lock stale and took it over")
					return
				}
			}
		}()
	} else {
		beaten <- nil
	}
	return func(ctx context.Context) error {
		once.Do(func() { close(stop) })
		lost := <-beaten
		for attempt := 1; ; attempt++ {
			ours, err := execOne(ctx, conn, `UPDATE `+migrationLockTable+` SET holder = '', beat = 0 WHERE id = 1 AND holder = ?`, me)
			switch {
			case err != nil && errors.Is(d.ClassifyError(err), dialect.ErrDeadlock) && attempt < 10:
				continue
			case err != nil:
				return fmt.Errorf("unlock database %q after migration (Galera): %w", database, d.ClassifyError(err))
			case !ours && lost == nil:
				lost = errors.New("another migrator found this one's lock stale and took it over")
			}
			if lost != nil {
				return fmt.Errorf("unlock database %q after migration (Galera): %w", database, lost)
			}
			return nil
		}
	}, nil
}

// execOne runs an UPDATE and reports whether it changed a row.
func execOne(ctx context.Context, q interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, query string, args ...any) (bool, error) {
	res, err := q.ExecContext(ctx, query, args...)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}
