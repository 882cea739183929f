package integration_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dsn"
)

// Environment of a child process.
const (
	childRoleEnv  = "SQLDLM_TEST_CHILD"
	childDSNEnv   = "SQLDLM_TEST_CHILD_DSN"
	childKindEnv  = "SQLDLM_TEST_CHILD_KIND"
	childNameEnv  = "SQLDLM_TEST_CHILD_LOCK"
	childTTLEnv   = "SQLDLM_TEST_CHILD_TTL"
	childRoundEnv = "SQLDLM_TEST_CHILD_ROUNDS"
	childOwnerEnv = "SQLDLM_TEST_CHILD_OWNER"
	childModeEnv  = "SQLDLM_TEST_CHILD_MODE"  // "shared" for a shared holder
	childLimitEnv = "SQLDLM_TEST_CHILD_LIMIT" // the permit role's semaphore limit
	// Set on the go test command (children inherit it), any value: each
	// child's client logs at debug level to the test's stderr.
	childDebugEnv = "SQLDLM_TEST_CHILD_DEBUG"
	// childPayload is the payload the holder role sets on its lock.
	childPayload = "resize volume-1, step 2 of 3"
)

// childMain runs a child role and returns its exit code. Children talk to
// the parent in lines on stdin/stdout.
func childMain(role string) int {
	ctx := context.Background()
	db, _, err := dsn.Open(ctx, os.Getenv(childDSNEnv))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer db.Close()
	ttl, _ := time.ParseDuration(os.Getenv(childTTLEnv))
	cfg := sqldlm.Config{TTL: ttl, Owner: os.Getenv(childOwnerEnv)}
	if os.Getenv(childDebugEnv) != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	c, err := sqldlm.New(db, cfg)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer c.Close()
	kind, name := os.Getenv(childKindEnv), os.Getenv(childNameEnv)
	switch role {
	case "holder":
		return holder(ctx, c, db, kind, name)
	case "worker":
		rounds, _ := strconv.Atoi(os.Getenv(childRoundEnv))
		return worker(ctx, c, db, kind, name, rounds)
	case "contend":
		rounds, _ := strconv.Atoi(os.Getenv(childRoundEnv))
		return contend(ctx, c, db, kind, rounds)
	case "member":
		return member(ctx, c, name)
	case "permit":
		limit, _ := strconv.Atoi(os.Getenv(childLimitEnv))
		return permit(ctx, c, name, limit)
	}
	fmt.Println("error unknown role", role)
	return 2
}

// holder takes the lock, says "granted TOKEN", then obeys commands:
// "write" makes one fenced write and answers "ok" or "lost ERR"; "exit"
// releases and exits.
func holder(ctx context.Context, c *sqldlm.Client, db *sql.DB, kind, name string) int {
	mode := sqldlm.Exclusive
	if os.Getenv(childModeEnv) == "shared" {
		mode = sqldlm.Shared
	}
	l, err := c.Lock(ctx, name, mode, sqldlm.WithPayload(childPayload))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("granted", l.Token())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch strings.TrimSpace(in.Text()) {
		case "write":
			if err := fencedWrite(ctx, db, kind, l, "child"); err != nil {
				fmt.Println("lost", err)
			} else {
				fmt.Println("ok")
			}
		case "fence-open":
			// A fenced transaction with a write in it, left open until "commit".
			tx, err := db.BeginTx(ctx, nil)
			if err == nil {
				err = l.Fence(ctx, tx)
			}
			if err == nil {
				_, err = tx.ExecContext(ctx, q(kind, `INSERT INTO test_journal (name, seq, token, writer) VALUES (?, 0, ?, 'child-open-tx')`),
					name, l.Token())
			}
			if err != nil {
				fmt.Println("error", err)
				continue
			}
			fmt.Println("fenced")
			if !in.Scan() {
				return 0
			}
			if err := tx.Commit(); err != nil {
				fmt.Println("commit-failed", strings.ReplaceAll(err.Error(), " ", "_"))
			} else {
				fmt.Println("committed")
			}
		case "status":
			// Whether the lock is still held, without waiting.
			if err := l.Err(); err != nil {
				fmt.Println("lost", err)
			} else {
				fmt.Println("held")
			}
		case "upgrade":
			if err := l.Upgrade(ctx); err != nil {
				fmt.Println("lost", err)
			} else {
				fmt.Println("upgraded", l.Token())
			}
		case "exit":
			_ = l.Release(ctx)
			return 0
		}
	}
	return 0
}

// member joins the group name as its owner, says "joined INCARNATION", and
// stays until stdin ends ("status" answers "member" or "out ERR").
func member(ctx context.Context, c *sqldlm.Client, group string) int {
	m, err := c.Join(ctx, group, os.Getenv(childOwnerEnv))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("joined", m.Incarnation())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if strings.TrimSpace(in.Text()) == "status" {
			if err := m.Err(); err != nil {
				fmt.Println("out", err)
			} else {
				fmt.Println("member")
			}
		}
	}
	return 0
}

// permit acquires a permit of the semaphore name with limit, says "permit
// TOKEN SLOT", and keeps it until stdin ends ("status" answers "held" or
// "lost ERR").
func permit(ctx context.Context, c *sqldlm.Client, name string, limit int) int {
	p, err := c.Semaphore(name, limit).Acquire(ctx)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("permit", p.Token(), p.Slot())
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if strings.TrimSpace(in.Text()) == "status" {
			if err := p.Err(); err != nil {
				fmt.Println("lost", err)
			} else {
				fmt.Println("held")
			}
		}
	}
	return 0
}

// worker takes the lock rounds times, each time making a fenced increment.
func worker(ctx context.Context, c *sqldlm.Client, db *sql.DB, kind, name string, rounds int) int {
	for range rounds {
		l, err := c.Lock(ctx, name, sqldlm.Exclusive)
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		if err := fencedWrite(ctx, db, kind, l, os.Getenv(childOwnerEnv)); err != nil {
			fmt.Println("error", err)
			return 1
		}
		if err := l.Release(ctx); err != nil {
			fmt.Println("error", err)
			return 1
		}
	}
	fmt.Println("done")
	return 0
}

// contend runs S1's workload in one process: 2 clients (each on its own
// pool, as two services would be) × 2 goroutines, each taking the hot name
// or one of 8 warm names rounds times and making one or two fenced writes
// under each grant. It says "done N L" with N the number of fenced
// transactions it saw commit and L the number of grants it saw lost (a
// fenced write refused with ErrLost: not acknowledged, and the journal must
// not have it).
func contend(ctx context.Context, c *sqldlm.Client, db *sql.DB, kind string, rounds int) int {
	db2, _, err := dsn.Open(ctx, os.Getenv(childDSNEnv))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer db2.Close()
	ttl, _ := time.ParseDuration(os.Getenv(childTTLEnv))
	c2, err := sqldlm.New(db2, sqldlm.Config{TTL: ttl, Owner: os.Getenv(childOwnerEnv) + "-b"})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer c2.Close()
	var acked, lost atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	for ci, cl := range []*sqldlm.Client{c, c2} {
		pool := []*sql.DB{db, db2}[ci]
		for g := range 2 {
			wg.Go(func() {
				writer := fmt.Sprintf("%s/%d/%d", os.Getenv(childOwnerEnv), ci, g)
				for i := range rounds {
					name := "hot"
					if (i+g)%2 == 1 {
						name = fmt.Sprintf("warm/%d", rand.IntN(8))
					}
					l, err := cl.Lock(ctx, name, sqldlm.Exclusive)
					if err != nil {
						failed.Store(err)
						return
					}
					for range 1 + rand.IntN(2) {
						err := fencedWrite(ctx, pool, kind, l, writer)
						if errors.Is(err, sqldlm.ErrLost) {
							lost.Add(1)
							break
						}
						if err != nil {
							failed.Store(err)
							return
						}
						acked.Add(1)
					}
					if err := l.Release(ctx); err != nil && !errors.Is(err, sqldlm.ErrLost) {
						failed.Store(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("done", acked.Load(), lost.Load())
	return 0
}

// fencedWrite increments the name's counter and appends a journal row
// (sequence number = the counter's new value, the lock's token, the writer)
// in one transaction fenced by l.
func fencedWrite(ctx context.Context, db *sql.DB, kind string, l *sqldlm.Lock, writer string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := l.Fence(ctx, tx); err != nil {
		return err
	}
	var n int64
	if err := tx.QueryRowContext(ctx, q(kind, `SELECT n FROM test_counter WHERE name = ?`), l.Name()).Scan(&n); errors.Is(err, sql.ErrNoRows) {
		if _, err := tx.ExecContext(ctx, q(kind, `INSERT INTO test_counter (name, n) VALUES (?, 0)`), l.Name()); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	n++
	if _, err := tx.ExecContext(ctx, q(kind, `UPDATE test_counter SET n = ? WHERE name = ?`), n, l.Name()); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, q(kind, `INSERT INTO test_journal (name, seq, token, writer) VALUES (?, ?, ?, ?)`),
		l.Name(), n, l.Token(), writer); err != nil {
		return err
	}
	return tx.Commit()
}

// q rewrites ? placeholders into PostgreSQL's $n.
func q(kind, query string) string {
	if kind != "postgres" {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
