//go:build linux

package integration_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/dbinstance"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/migrations"
)

// Galera single-writer through HAProxy, OpenStack's layout: every client
// reaches the cluster through one HAProxy whose first node takes the
// connections and the others are backups. The writer node is killed -9
// while a holder writes under its lock and a waiter waits:
//
//   - the holder keeps its lock (its renewals reach the next node once
//     HAProxy has marked the writer down and the cluster's stall after
//     losing a node is over; the TTL follows the G5 rule), and its fenced
//     writes go on there;
//   - the waiter is not granted while the holder holds, and is granted
//     once it releases, with a higher token;
//   - every fenced write the holder saw committed is in the survivors'
//     table (the kill loses no acknowledged write).
func TestGaleraThroughHAProxy(t *testing.T) {
	t.Parallel()
	cluster := dbinstance.StartGalera(t, 3)
	var addrs []string
	for _, n := range cluster.Nodes {
		addrs = append(addrs, n.Addr())
	}
	proxy := dbinstance.StartHAProxy(t, addrs, dbinstance.HAProxyOptions{})
	through := strings.Replace(cluster.DSN(0), addrs[0], proxy.Addr(), 1)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	open := func() *sql.DB {
		db, _, err := dsn.Open(ctx, through)
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		return db
	}
	setup := open()
	_, err := migrations.Up(ctx, setup, mysql.Dialect())
	require.NoError(t, err)
	_, err = setup.ExecContext(ctx, `CREATE TABLE volumes (id INT PRIMARY KEY, writes INT NOT NULL, token BIGINT NOT NULL)`)
	require.NoError(t, err)
	_, err = setup.ExecContext(ctx, `INSERT INTO volumes VALUES (1, 0, 0)`)
	require.NoError(t, err)

	// Galera's default evs.suspect_timeout (5 s) stalls commits for about
	// 6 s when a node dies; the G5 rule asks for a TTL of at least 12 s.
	const ttl = 15 * time.Second
	newClient := func(owner string) *sqldlm.Client {
		c, err := sqldlm.New(open(), sqldlm.Config{TTL: ttl, Owner: owner})
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	holder, waiter := newClient("holder"), newClient("waiter")
	l, err := holder.Lock(ctx, "volume/1", sqldlm.Exclusive)
	require.NoError(t, err)

	var (
		mu      sync.Mutex
		acked   int           // fenced writes whose COMMIT returned nil
		afterAt time.Duration // first acknowledged write after the kill, from the kill
		killed  time.Time
	)
	appDB := open()
	write := func() error {
		tx, err := appDB.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := l.Fence(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE volumes SET writes = writes + 1, token = ? WHERE id = 1`, l.Token()); err != nil {
			return err
		}
		return tx.Commit()
	}
	stopWriting := make(chan struct{})
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for {
			select {
			case <-stopWriting:
				return
			default:
			}
			began := time.Now()
			err := write()
			mu.Lock()
			if err == nil {
				acked++
				// Only a write begun after the kill had returned shows the
				// failover; one in flight at the kill may commit on the
				// dead node just before.
				if !killed.IsZero() && began.After(killed) && afterAt == 0 {
					afterAt = time.Since(killed)
				}
			}
			mu.Unlock()
			if errors.Is(err, sqldlm.ErrLost) {
				return
			}
			if err != nil {
				time.Sleep(50 * time.Millisecond) // the writer's own retry pace, not synchronisation
			}
		}
	}()

	granted := make(chan *sqldlm.Lock, 1)
	go func() {
		wl, err := waiter.Lock(ctx, "volume/1", sqldlm.Exclusive)
		if err == nil {
			granted <- wl
		}
		close(granted)
	}()

	// Let some writes through the first node, then kill it.
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return acked >= 10 }, time.Minute, 10*time.Millisecond)
	cluster.Nodes[0].Crash()
	mu.Lock()
	killed = time.Now()
	mu.Unlock()

	// The holder writes again through the next node.
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return afterAt > 0 }, 2*ttl, 20*time.Millisecond,
		"a fenced write after the writer's kill")
	mu.Lock()
	t.Logf("first fenced write after the writer's kill -9: %s later", afterAt.Round(time.Millisecond))
	mu.Unlock()
	require.NoError(t, l.Err(), "the holder kept its lock through the failover")
	select {
	case wl := <-granted:
		t.Fatalf("the waiter was granted (token %d) while the holder held", wl.Token())
	default:
	}

	close(stopWriting)
	<-writerDone
	require.NoError(t, l.Release(ctx))
	var wl *sqldlm.Lock
	select {
	case wl = <-granted:
	case <-time.After(ttl):
		t.Fatal("the waiter was not granted after the release")
	}
	require.NotNil(t, wl)
	require.Greater(t, wl.Token(), l.Token())

	var writes int
	require.NoError(t, open().QueryRowContext(ctx, `SELECT writes FROM volumes WHERE id = 1`).Scan(&writes))
	mu.Lock()
	defer mu.Unlock()
	require.GreaterOrEqual(t, writes, acked, "every acknowledged fenced write is on the survivors")
	t.Logf("%d fenced writes acknowledged, %d in the table (a write whose answer the kill cut may have committed)", acked, writes)
}
