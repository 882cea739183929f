//go:build linux

package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// setup returns a migrated database of kind with the test's own tables.
func setup(t *testing.T, kind string) *testdb.DB {
	t.Helper()
	db := testdb.OpenMigrated(t, kind)
	ctx := context.Background()
	for _, stmt := range []string{
		`CREATE TABLE test_counter (name VARCHAR(64) PRIMARY KEY, n BIGINT NOT NULL)`,
		`CREATE TABLE test_journal (name VARCHAR(64) NOT NULL, seq BIGINT NOT NULL, token BIGINT NOT NULL, writer VARCHAR(64) NOT NULL)`,
	} {
		_, err := db.ExecContext(ctx, stmt)
		require.NoError(t, err)
	}
	return db
}

// child is a running child process.
type child struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func startChild(t *testing.T, db *testdb.DB, role, name, owner string, ttl time.Duration, rounds int, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...),
		childRoleEnv+"="+role, childDSNEnv+"="+db.DSN, childKindEnv+"="+db.Kind,
		childNameEnv+"="+name, childTTLEnv+"="+ttl.String(), childRoundEnv+"="+strconv.Itoa(rounds),
		childOwnerEnv+"="+owner)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			c.lines <- s.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return c
}

// expect waits for the child's next line and checks its first word.
func (c *child) expect(word string, within time.Duration) string {
	c.t.Helper()
	select {
	case line, ok := <-c.lines:
		require.True(c.t, ok, "child exited before saying %q", word)
		require.True(c.t, strings.HasPrefix(line, word), "child said %q, expected %q", line, word)
		return line
	case <-time.After(within):
		c.t.Fatalf("child did not say %q within %s", word, within)
		return ""
	}
}

func (c *child) send(cmd string) {
	c.t.Helper()
	_, err := fmt.Fprintln(c.stdin, cmd)
	require.NoError(c.t, err)
}

func newClient(t *testing.T, db *testdb.DB, cfg sqldlm.Config) *sqldlm.Client {
	t.Helper()
	pool := testdb.Reopen(t, db.Kind, db.DSN)
	c, err := sqldlm.New(pool.DB, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

const childTTL = 2 * time.Second

// Several OS processes contend for one name: every fenced increment lands
// exactly once, in token order.
func TestProcessesContend(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			const procs, rounds = 3, 15
			children := make([]*child, procs)
			for i := range children {
				children[i] = startChild(t, db, "worker", "hot", fmt.Sprintf("worker-%d", i), childTTL, rounds)
			}
			for _, c := range children {
				c.expect("done", time.Minute)
			}
			var n int
			require.NoError(t, db.QueryRowContext(context.Background(), `SELECT n FROM test_counter`).Scan(&n))
			require.Equal(t, procs*rounds, n, "no lost update")
			rows, err := db.QueryContext(context.Background(), `SELECT seq, token FROM test_journal ORDER BY seq`)
			require.NoError(t, err)
			defer rows.Close()
			var seqs int
			last := int64(0)
			for rows.Next() {
				var seq, token int64
				require.NoError(t, rows.Scan(&seq, &token))
				seqs++
				require.EqualValues(t, seqs, seq, "one journal row per increment")
				require.Greater(t, token, last, "tokens increase in commit order")
				last = token
			}
			require.NoError(t, rows.Err())
			require.Equal(t, procs*rounds, seqs)
		})
	}
}

// A holder killed with SIGKILL loses its lock within the TTL plus a little,
// with nobody's help: the waiter takes it over (the reapers are off).
func TestKilledHolderFreesLock(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			holder := startChild(t, db, "holder", "node/1", "doomed", childTTL, 0)
			granted := holder.expect("granted", 30*time.Second)
			deadToken, err := strconv.ParseInt(strings.Fields(granted)[1], 10, 64)
			require.NoError(t, err)
			c := newClient(t, db, sqldlm.Config{TTL: childTTL, ReapInterval: sqldlm.ReapDisabled})
			_, err = c.TryLock(context.Background(), "node/1", sqldlm.Exclusive)
			require.ErrorIs(t, err, sqldlm.ErrLocked)

			require.NoError(t, holder.cmd.Process.Kill())
			killed := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), childTTL+5*time.Second)
			defer cancel()
			l, err := c.Lock(ctx, "node/1", sqldlm.Exclusive)
			require.NoError(t, err, "the lock must be free within TTL plus a little")
			t.Logf("%s: SIGKILL to takeover: %s (TTL %s)", kind, time.Since(killed).Round(time.Millisecond), childTTL)
			require.LessOrEqual(t, time.Since(killed), childTTL+2*time.Second)
			tk := l.Takeover()
			require.NotNil(t, tk, "the takeover of a killed holder carries its context")
			require.Equal(t, "doomed", tk.Owner)
			require.Equal(t, deadToken, tk.Token)
			require.Equal(t, childPayload, tk.Payload, "and its payload")
			require.False(t, tk.ExpiredAt.After(time.Now()), "it expired before the takeover")
			require.NoError(t, l.Release(ctx))
		})
	}
}

// A holder paused (SIGSTOP) for longer than its TTL is taken over; once it
// resumes, its Fence fails and none of its writes lands after the takeover.
func TestPausedHolderIsFenced(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			holder := startChild(t, db, "holder", "vol/7", "paused", childTTL, 0)
			holder.expect("granted", 30*time.Second)
			holder.send("write")
			holder.expect("ok", 30*time.Second)

			require.NoError(t, holder.cmd.Process.Signal(syscall.SIGSTOP))
			c := newClient(t, db, sqldlm.Config{TTL: childTTL})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, err := c.Lock(ctx, "vol/7", sqldlm.Exclusive)
			require.NoError(t, err, "taken over while the holder is paused")
			require.NoError(t, fencedWrite(ctx, db.DB, kind, l, "parent"))

			require.NoError(t, holder.cmd.Process.Signal(syscall.SIGCONT))
			holder.send("write")
			holder.expect("lost", 30*time.Second)

			var childRows, after int
			require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(*) FROM test_journal WHERE writer = 'child'`).Scan(&childRows))
			require.Equal(t, 1, childRows, "only the write made before the pause landed")
			require.NoError(t, db.QueryRowContext(ctx,
				`SELECT COUNT(*) FROM test_journal c JOIN test_journal p ON p.writer = 'parent' WHERE c.writer = 'child' AND c.seq > p.seq`).Scan(&after))
			require.Zero(t, after)
		})
	}
}

// A holder paused inside a fenced transaction does not block a takeover
// forever: the server ends the idle transaction after the TTL, the takeover
// goes through, and the paused holder's write never commits. (On SQLite a
// paused writer blocks the whole database: a documented limit.)
func TestPausedInsideFencedTransaction(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{testdb.Postgres, testdb.MySQL} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := setup(t, kind)
			holder := startChild(t, db, "holder", "vol/8", "paused-in-tx", childTTL, 0)
			holder.expect("granted", 30*time.Second)
			holder.send("fence-open")
			holder.expect("fenced", 30*time.Second)
			require.NoError(t, holder.cmd.Process.Signal(syscall.SIGSTOP))
			paused := time.Now()

			c := newClient(t, db, sqldlm.Config{TTL: childTTL})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, err := c.Lock(ctx, "vol/8", sqldlm.Exclusive)
			require.NoError(t, err, "the takeover must not wait forever for the paused transaction")
			t.Logf("%s: paused in a fenced transaction to takeover: %s (TTL %s)", kind, time.Since(paused).Round(time.Millisecond), childTTL)
			require.NoError(t, fencedWrite(ctx, db.DB, kind, l, "parent"))

			require.NoError(t, holder.cmd.Process.Signal(syscall.SIGCONT))
			holder.send("commit")
			holder.expect("commit-failed", 30*time.Second)
			var n int
			require.NoError(t, db.QueryRowContext(ctx, `SELECT COUNT(*) FROM test_journal WHERE writer = 'child-open-tx'`).Scan(&n))
			require.Zero(t, n, "the paused holder's write never landed")
		})
	}
}
