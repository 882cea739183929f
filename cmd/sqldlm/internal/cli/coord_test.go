package cli

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

func TestMembersCommand(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			code, out, errOut := run(t, "members", "conductors", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code, errOut)
			require.Contains(t, out, `no live members in "conductors"`)

			a := client(t, db, "host-a")
			_, err := a.Join(ctx, "conductors", "conductor-1", sqldlm.WithMeta(`{"rack":1}`), sqldlm.WithWeight(2))
			require.NoError(t, err)
			code, out, _ = run(t, "members", "--dsn", db.DSN, "conductors") // the group after the flags works too
			require.Equal(t, ExitOK, code)
			require.Regexp(t, `(?m)^ID\s+OWNER\s+INCARNATION\s+WEIGHT\s+JOINED\s+EXPIRES\s+META$`, out)
			require.Regexp(t, `(?m)^conductor-1\s+host-a\s+\d+\s+2\s+`, out)
			require.Contains(t, out, `{"rack":1}`)

			code, out, _ = run(t, "members", "conductors", "--dsn", db.DSN, "--output", "json")
			require.Equal(t, ExitOK, code)
			var got membersJSON
			require.NoError(t, json.Unmarshal([]byte(out), &got))
			require.Equal(t, "conductors", got.Group)
			require.Len(t, got.Members, 1)
			require.Equal(t, "host-a", got.Members[0].Owner)
			require.Positive(t, got.Members[0].ExpiresInSeconds)
			require.Equal(t, got.Generation, got.Members[0].Incarnation)

			code, _, errOut = run(t, "members", "--dsn", db.DSN)
			require.Equal(t, ExitUsage, code)
			require.Contains(t, errOut, "missing GROUP")
			code, _, errOut = run(t, "members", "a", "b", "--dsn", db.DSN)
			require.Equal(t, ExitUsage, code)
			require.Contains(t, errOut, `unexpected argument "b"`)
		})
	}
}

func TestLeaderCommandAndRunLeader(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			code, _, errOut := run(t, "leader", "nightly", "--dsn", db.DSN)
			require.Equal(t, ExitNoLeader, code)
			require.Contains(t, errOut, `election "nightly" has no live leader`)

			// While run --leader runs its command, sqldlm leader shows it,
			// and a second run --leader --wait 0 is refused.
			started := make(chan struct{})
			result := make(chan string, 1)
			go func() {
				code, out, errOut := run(t, "run", "--dsn", db.DSN, "--leader", "nightly", "--value", "host-1", "--owner", "cron-1",
					"--", "sh", "-c", `echo "term=$SQLDLM_TOKEN election=$SQLDLM_ELECTION"; touch "$0"; sleep 2`, t.TempDir()+"/started")
				result <- fmtCode(code) + out + errOut
			}()
			go func() {
				defer close(started)
				for {
					if c, _, _ := run(t, "leader", "nightly", "--dsn", db.DSN); c == ExitOK {
						return
					}
					time.Sleep(20 * time.Millisecond) // poll spacing
				}
			}()
			select {
			case <-started:
			case <-time.After(20 * time.Second):
				t.Fatal("run --leader was never elected")
			}
			code, out, _ := run(t, "leader", "nightly", "--dsn", db.DSN, "--output", "json")
			require.Equal(t, ExitOK, code)
			var got struct {
				Leader leaderJSON `json:"leader"`
			}
			require.NoError(t, json.Unmarshal([]byte(out), &got))
			require.Equal(t, "cron-1", got.Leader.Owner)
			require.Equal(t, "host-1", got.Leader.Value)
			require.Positive(t, got.Leader.Term)
			code, _, _ = run(t, "run", "--dsn", db.DSN, "--leader", "nightly", "--wait", "0", "--", "true")
			require.Equal(t, ExitNotAcquired, code, "a second leader is refused")
			res := <-result
			require.Contains(t, res, "exit 0")
			require.Regexp(t, `term=\d+ election=nightly`, res)

			// The library's Leader sees the same election.
			c := client(t, db, "observer")
			_, err := c.Leader(ctx, "nightly")
			require.ErrorIs(t, err, sqldlm.ErrNoLeader, "the leadership ended with the command")

			code, _, errOut = run(t, "run", "--dsn", db.DSN, "--leader", "x", "--lock", "y", "--", "true")
			require.Equal(t, ExitUsage, code)
			require.Contains(t, errOut, "exclude each other")
		})
	}
}

func fmtCode(code int) string {
	if code == ExitOK {
		return "exit 0\n"
	}
	return "exit failed\n"
}

func TestRunSemaphore(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			c := client(t, db, "holder")
			s := c.Semaphore("jobs", 2)
			p1, err := s.Acquire(ctx)
			require.NoError(t, err)
			p2, err := s.Acquire(ctx)
			require.NoError(t, err)
			code, _, _ := run(t, "run", "--dsn", db.DSN, "--semaphore", "jobs:2", "--wait", "0", "--", "true")
			require.Equal(t, ExitNotAcquired, code, "both permits are held")

			require.NoError(t, p2.Release(ctx))
			code, out, errOut := run(t, "run", "--dsn", db.DSN, "--semaphore", "jobs:2", "--wait", "0", "--",
				"sh", "-c", `echo "sem=$SQLDLM_SEMAPHORE slot=$SQLDLM_SLOT token=$SQLDLM_TOKEN"`)
			require.Equal(t, ExitOK, code, errOut)
			require.Regexp(t, `sem=jobs slot=[01] token=\d+`, out)

			code, _, errOut = run(t, "run", "--dsn", db.DSN, "--semaphore", "jobs:3", "--wait", "0", "--", "true")
			require.Equal(t, ExitError, code)
			require.Contains(t, errOut, "limit", "another limit is refused while permits of the old one are held")
			require.NoError(t, p1.Release(ctx))

			for _, bad := range []string{"jobs", "jobs:0", "jobs:x", ":2"} {
				code, _, errOut = run(t, "run", "--dsn", db.DSN, "--semaphore", bad, "--", "true")
				require.Equal(t, ExitUsage, code, bad)
				require.Contains(t, errOut, "--semaphore")
			}
		})
	}
}
