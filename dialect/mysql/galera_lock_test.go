//go:build linux

package mysql

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sqldlm/sqldlm/internal/dbinstance"
)

// TestGaleraMigrationLockStaleness: on a Galera node (wsrep_on) the
// migration lock is the sqldlm_migration_lock row. A waiter takes over a
// row whose holder stopped beating, and that holder's unlock reports it; a
// holder that beats from its pool keeps the lock however long it migrates.
func TestGaleraMigrationLockStaleness(t *testing.T) {
	c := dbinstance.StartGalera(t, 1)
	defer func(b, s time.Duration) { migrationLockBeat, migrationLockStale = b, s }(migrationLockBeat, migrationLockStale)
	migrationLockBeat, migrationLockStale = 50*time.Millisecond, time.Second
	d := Dialect().(mysqlDialect)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	db := c.Nodes[0].Open(t)
	conn := func() *sql.Conn {
		cn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cn.Close() })
		return cn
	}

	// A holder that beats: a waiter gives up (its ctx ends) long after the
	// staleness limit.
	unlockA, err := d.LockMigrationsPool(ctx, db, conn())
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 3*migrationLockStale)
	_, err = d.LockMigrationsPool(wctx, db, conn())
	wcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter on a beating holder: %v, want the deadline", err)
	}
	if err := unlockA(ctx); err != nil {
		t.Fatalf("unlock A: %v", err)
	}

	// A holder that does not beat (no pool, as if dead): taken over.
	unlockB, err := d.LockMigrations(ctx, conn())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	unlockC, err := d.LockMigrationsPool(ctx, db, conn())
	if err != nil {
		t.Fatalf("waiter on a stale holder: %v", err)
	}
	if waited := time.Since(t0); waited < migrationLockStale {
		t.Errorf("took the lock over after %v, before the staleness limit %v", waited, migrationLockStale)
	}
	if err := unlockB(ctx); err == nil || !strings.Contains(err.Error(), "took it over") {
		t.Errorf("unlock of the stale holder: %v, want a takeover error", err)
	}
	if err := unlockC(ctx); err != nil {
		t.Errorf("unlock C: %v", err)
	}
	// Free again: taken at once.
	unlockD, err := d.LockMigrations(ctx, conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := unlockD(ctx); err != nil {
		t.Fatal(err)
	}
}
