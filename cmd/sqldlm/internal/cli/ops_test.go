package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

func client(t *testing.T, db *testdb.DB, owner string) *sqldlm.Client {
	t.Helper()
	pool := testdb.Reopen(t, db.Kind, db.DSN)
	c, err := sqldlm.New(pool.DB, sqldlm.Config{Owner: owner, TTL: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestLocksAndLeasesCommands(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			a := client(t, db, "conductor-with-a-rather-long-owner-name/4242")
			w := client(t, db, "conductor-2")
			for i := range 50 {
				_, err := a.Lock(ctx, fmt.Sprintf("node/%02d-with-a-long-name-for-width", i), sqldlm.Exclusive)
				require.NoError(t, err)
			}
			waitCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			go func() { _, _ = w.Lock(waitCtx, "node/07-with-a-long-name-for-width", sqldlm.Shared) }()

			var out string
			require.Eventually(t, func() bool {
				code, o, _ := runTTY(t, "locks", "--dsn", db.DSN)
				out = o
				return code == ExitOK && strings.Contains(o, "1 conduct…")
			}, 10*time.Second, 20*time.Millisecond)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			require.Len(t, lines, 51, "a header and one row per lock")
			require.Regexp(t, `^NAME\s+MODE\s+TOKEN\s+HOLDER\s+HELD\s+EXPIRES\s+WAITING$`, lines[0])
			for _, line := range lines {
				require.LessOrEqual(t, len([]rune(line)), 80, "fits an 80-column terminal: %q", line)
			}
			// Piped, or with --wide, every name and owner is whole, so that a
			// name can be copied into sqldlm break.
			for _, wide := range []func(*testing.T, ...string) (int, string, string){run, runTTY} {
				code, o, _ := wide(t, "locks", "--dsn", db.DSN, "--wide")
				require.Equal(t, ExitOK, code)
				require.Contains(t, o, "node/07-with-a-long-name-for-width ")
				require.Contains(t, o, " conductor-with-a-rather-long-owner-name/4242 ")
				require.NotContains(t, o, "…")
			}
			code, piped, _ := run(t, "locks", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			require.Contains(t, piped, "node/07-with-a-long-name-for-width ", "piped output is whole without --wide")

			code, out, _ = run(t, "locks", "--dsn", db.DSN, "--prefix", "node/07", "--output", "json")
			require.Equal(t, ExitOK, code)
			var got locksJSON
			require.NoError(t, json.Unmarshal([]byte(out), &got))
			require.Len(t, got.Locks, 1)
			l := got.Locks[0]
			require.Equal(t, "exclusive", l.Mode)
			require.Equal(t, "conductor-with-a-rather-long-owner-name/4242", l.Holders[0].Owner)
			require.True(t, l.Holders[0].Live)
			require.Greater(t, l.Holders[0].ExpiresInSeconds, 0.0)
			require.Equal(t, "conductor-2", l.Waiters[0].Owner)
			require.Equal(t, 1, l.Waiters[0].Position)

			code, out, _ = runTTY(t, "leases", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			require.Regexp(t, `conductor-with-a-ra…\s+(…[0-9]{8}|[0-9]{1,9})\s+live\s+\S+\s+\S+ ago\s+\S+\s+50\s+0`, out, out)
			code, out, _ = run(t, "leases", "--dsn", db.DSN, "--output", "json")
			require.Equal(t, ExitOK, code)
			var leases leasesJSON
			require.NoError(t, json.Unmarshal([]byte(out), &leases))
			require.Len(t, leases.Leases, 2)
			// One lease-id format: the table piped shows the id JSON gives,
			// in full, and on a terminal its last digits.
			code, piped, _ = run(t, "leases", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			for _, l := range leases.Leases {
				id := fmt.Sprint(l.ID)
				require.Regexp(t, `(?m)^`+regexp.QuoteMeta(l.Owner)+`\s+`+id+`\s`, piped)
			}

			code, _, errOut := run(t, "locks", "--dsn", db.DSN, "--output", "yaml")
			require.Equal(t, ExitUsage, code)
			require.Contains(t, errOut, `unknown --output "yaml"`)
		})
	}
}

// break asks first; with --yes it breaks the holder's lease: the holder's
// Fence fails and a waiter gets the lock.
func TestBreakCommand(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			stuck := client(t, db, "stuck-engine")
			held, err := stuck.Lock(ctx, "stack/9", sqldlm.Exclusive)
			require.NoError(t, err)

			var out, errOut bytes.Buffer
			code := Main(ctx, []string{"break", "stack/9", "--dsn", db.DSN}, strings.NewReader("n\n"), &out, &errOut)
			require.Equal(t, ExitNotConfirmed, code)
			require.Contains(t, out.String(), "stuck-engine  exclusive")
			require.NoError(t, held.Err(), "a refused break changes nothing")

			code, o, e := run(t, "break", "stack/9", "--dsn", db.DSN, "--yes")
			require.Equal(t, ExitOK, code, e)
			require.Contains(t, o, `broke 1 lease(s) holding "stack/9"`)
			require.Contains(t, e, "lease broken by operator")
			require.Contains(t, e, "lock_name=stack/9")

			tx, err := db.BeginTx(ctx, nil)
			require.NoError(t, err)
			require.ErrorIs(t, held.Fence(ctx, tx), sqldlm.ErrLost, "the holder's next Fence fails")
			require.NoError(t, tx.Rollback(), "ErrLost: roll back")
			other := client(t, db, "other")
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err = other.Lock(wctx, "stack/9", sqldlm.Exclusive)
			require.NoError(t, err, "a waiter takes the broken holder's lock")

			code, o, _ = run(t, "break", "nothing-here", "--dsn", db.DSN, "--yes")
			require.Equal(t, ExitOK, code)
			require.Contains(t, o, "nothing to break")
		})
	}
}

func TestRunCommand(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.OpenMigrated(t, kind)
			code, out, errOut := run(t, "run", "--dsn", db.DSN, "--lock", "cron/backup", "--", "sh", "-c", `echo "token=$SQLDLM_TOKEN lock=$SQLDLM_LOCK"; exit 7`)
			require.Equal(t, 7, code, errOut)
			require.Regexp(t, `token=[1-9][0-9]* lock=cron/backup`, out)

			holder := client(t, db, "busy")
			_, err := holder.Lock(context.Background(), "cron/backup", sqldlm.Exclusive)
			require.NoError(t, err)
			code, _, errOut = run(t, "run", "--dsn", db.DSN, "--lock", "cron/backup", "--wait", "0", "--", "true")
			require.Equal(t, ExitNotAcquired, code)
			require.Contains(t, errOut, `held exclusive by "busy"`)
			require.Regexp(t, `could not get lock "cron/backup": held exclusive by "busy" for \S+ \(token \d+, lease \d+ expires in \S+ unless renewed; 0 waiter\(s\) queued\)`, errOut)
			// Waiting, run says for whom; when --wait runs out, who still
			// holds the lock and for how long.
			code, _, errOut = run(t, "run", "--dsn", db.DSN, "--lock", "cron/backup", "--wait", "200ms", "--", "true")
			require.Equal(t, ExitNotAcquired, code)
			require.Regexp(t, `(?m)^sqldlm run: waiting for lock "cron/backup": held exclusive by "busy" for \S+ \(token \d+`, errOut)
			require.Regexp(t, `(?m)^sqldlm run: could not get lock "cron/backup" within --wait 200ms: held exclusive by "busy" for \S+ \(token \d+`, errOut)
			require.NotContains(t, errOut, "context deadline exceeded")
		})
	}
}

// When an operator breaks its lock, run stops its command and exits 76.
func TestRunStopsCommandWhenLockIsLost(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			db := testdb.OpenMigrated(t, kind)
			type result struct {
				code           int
				stdout, stderr string
			}
			done := make(chan result, 1)
			go func() {
				var out, errOut bytes.Buffer
				code := Main(context.Background(), []string{"run", "--dsn", db.DSN, "--lock", "job/1", "--ttl", "1s", "--grace", "2s",
					"--", "sh", "-c", "trap 'echo got-term; exit 143' TERM; while true; do sleep 0.05; done"},
					strings.NewReader(""), &out, &errOut)
				done <- result{code, out.String(), errOut.String()}
			}()
			require.Eventually(t, func() bool {
				code, out, _ := run(t, "locks", "--dsn", db.DSN, "--prefix", "job/1")
				return code == ExitOK && strings.Contains(out, "job/1")
			}, 10*time.Second, 20*time.Millisecond)
			code, _, errOut := run(t, "break", "job/1", "--dsn", db.DSN, "--yes")
			require.Equal(t, ExitOK, code, errOut)
			select {
			case r := <-done:
				require.Equal(t, ExitLockLost, r.code, r.stderr)
				require.Contains(t, r.stdout, "got-term", "the command was sent SIGTERM")
				require.Contains(t, r.stderr, `lock "job/1" lost`)
			case <-time.After(15 * time.Second):
				t.Fatal("run did not stop its command after the lock was lost")
			}
		})
	}
}

// reap, break and migrate status also speak JSON.
func TestJSONOutputs(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	// A long TTL and no reaper: the holder must not learn of the break (at
	// a renewal) and delete its broken lease before reap runs.
	pool := testdb.Reopen(t, db.Kind, db.DSN)
	holder, err := sqldlm.New(pool.DB, sqldlm.Config{Owner: "json-holder", TTL: time.Minute, ReapInterval: sqldlm.ReapDisabled})
	require.NoError(t, err)
	t.Cleanup(func() { holder.Close() })
	_, err = holder.Lock(context.Background(), "stack/1", sqldlm.Exclusive)
	require.NoError(t, err)

	code, out, errOut := run(t, "break", "stack/1", "--dsn", db.DSN, "--output", "json")
	require.Equal(t, ExitUsage, code, "JSON mode asks no question, so it needs --yes")
	require.Contains(t, errOut, "needs --yes")
	code, out, errOut = run(t, "break", "stack/1", "--dsn", db.DSN, "--output", "json", "--yes")
	require.Equal(t, ExitOK, code, errOut)
	var broke breakJSON
	require.NoError(t, json.Unmarshal([]byte(out), &broke))
	require.Equal(t, "stack/1", broke.Name)
	require.Len(t, broke.Broken, 1)
	require.Equal(t, "json-holder", broke.Broken[0].Owner)

	code, out, errOut = run(t, "reap", "--dsn", db.DSN, "--output", "json")
	require.Equal(t, ExitOK, code, errOut)
	var reaped reapJSON
	require.NoError(t, json.Unmarshal([]byte(out), &reaped))
	require.Equal(t, 1, reaped.Leases, "the broken lease")
	require.Equal(t, []string{"stack/1"}, reaped.Freed)

	code, out, errOut = run(t, "migrate", "status", "--dsn", db.DSN, "--output", "json")
	require.Equal(t, ExitOK, code, errOut)
	var status struct {
		Migrations []struct {
			Version   int64      `json:"version"`
			State     string     `json:"state"`
			AppliedAt *time.Time `json:"applied_at"`
		} `json:"migrations"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &status))
	require.NotEmpty(t, status.Migrations)
	require.Equal(t, "applied", status.Migrations[0].State)
	require.NotNil(t, status.Migrations[0].AppliedAt)
}

// A command that ignores SIGTERM is killed --grace after the lock is lost.
func TestRunKillsCommandThatIgnoresSIGTERM(t *testing.T) {
	t.Parallel()
	db := testdb.OpenMigrated(t, testdb.SQLite)
	type result struct {
		code           int
		stdout, stderr string
		took           time.Duration
	}
	done := make(chan result, 1)
	var broken time.Time
	brokenSet := make(chan struct{})
	go func() {
		var out, errOut bytes.Buffer
		code := Main(context.Background(), []string{"run", "--dsn", db.DSN, "--lock", "job/stubborn", "--ttl", "1s", "--grace", "300ms",
			"--", "sh", "-c", "trap 'echo got-term' TERM; while true; do sleep 0.05; done"},
			strings.NewReader(""), &out, &errOut)
		<-brokenSet
		done <- result{code, out.String(), errOut.String(), time.Since(broken)}
	}()
	require.Eventually(t, func() bool {
		code, out, _ := run(t, "locks", "--dsn", db.DSN, "--prefix", "job/stubborn")
		return code == ExitOK && strings.Contains(out, "job/stubborn")
	}, 10*time.Second, 20*time.Millisecond)
	broken = time.Now()
	close(brokenSet)
	code, _, errOut := run(t, "break", "job/stubborn", "--dsn", db.DSN, "--yes")
	require.Equal(t, ExitOK, code, errOut)
	select {
	case r := <-done:
		require.Equal(t, ExitLockLost, r.code, r.stderr)
		require.Contains(t, r.stdout, "got-term", "the command was sent SIGTERM first")
		require.Contains(t, r.stderr, `lock "job/stubborn" lost`)
		require.GreaterOrEqual(t, r.took, 300*time.Millisecond, "SIGKILL comes --grace after SIGTERM")
	case <-time.After(15 * time.Second):
		t.Fatal("run did not kill its command that ignores SIGTERM")
	}
}
