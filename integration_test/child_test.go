package integration_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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
	c, err := sqldlm.New(db, sqldlm.Config{TTL: ttl, Owner: os.Getenv(childOwnerEnv)})
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
	}
	fmt.Println("error unknown role", role)
	return 2
}

// holder takes the lock, says "granted TOKEN", then obeys commands:
// "write" makes one fenced write and answers "ok" or "lost ERR"; "exit"
// releases and exits.
func holder(ctx context.Context, c *sqldlm.Client, db *sql.DB, kind, name string) int {
	l, err := c.Lock(ctx, name, sqldlm.Exclusive, sqldlm.WithPayload(childPayload))
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
		case "exit":
			_ = l.Release(ctx)
			return 0
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
