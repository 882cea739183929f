package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

func TestLogCommand(t *testing.T) {
	t.Parallel()
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db := testdb.OpenMigrated(t, kind)
			c := client(t, db, "conductor-1")

			code, out, stderr := run(t, "log", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			require.Equal(t, "no audit rows\n", out)
			require.Contains(t, stderr, "the audit log is off")

			code, out, _ = run(t, "log", "on", "--dsn", db.DSN, "--retention", "24h")
			require.Equal(t, ExitOK, code)
			require.Equal(t, "audit log on (rows kept 24h0m0s)\n", out)
			for _, name := range []string{"node/42", "node/43"} {
				l, err := c.Lock(ctx, name, sqldlm.Exclusive, sqldlm.WithPayload("deploy"))
				require.NoError(t, err)
				require.NoError(t, l.Release(ctx))
			}

			code, out, stderr = run(t, "log", "--dsn", db.DSN, "--name", "node/42", "--since", "1h")
			require.Equal(t, ExitOK, code)
			require.Empty(t, stderr)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			require.Len(t, lines, 3, "a header, the grant and the release:\n%s", out)
			require.Regexp(t, `^TIME \(UTC\)\s+EVENT\s+NAME\s+OWNER\s+LEASE\s+TOKEN\s+MODE\s+DETAIL$`, lines[0])
			require.Regexp(t, `^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\s+grant\s+node/42\s+conductor-1\s+[0-9]+\s+\d+\s+exclusive\s+\[deploy\]$`, lines[1])
			require.Regexp(t, `\srelease\s+node/42\s`, lines[2])

			code, out, _ = run(t, "log", "--dsn", db.DSN, "--limit", "1", "--output", "json")
			require.Equal(t, ExitOK, code)
			var got logJSON
			require.NoError(t, json.Unmarshal([]byte(out), &got))
			require.True(t, got.Enabled)
			require.Equal(t, float64(24*3600), got.RetentionSeconds)
			require.Len(t, got.Entries, 1)
			require.Equal(t, "release", got.Entries[0].Event)
			require.Equal(t, "node/43", got.Entries[0].Name)
			require.Equal(t, "conductor-1", got.Entries[0].Owner)

			code, _, _ = run(t, "log", "off", "--dsn", db.DSN)
			require.Equal(t, ExitOK, code)
			l, err := c.Lock(ctx, "node/44", sqldlm.Exclusive)
			require.NoError(t, err)
			require.NoError(t, l.Release(ctx))
			code, out, _ = run(t, "log", "--dsn", db.DSN, "--output", "json")
			require.Equal(t, ExitOK, code)
			require.NoError(t, json.Unmarshal([]byte(out), &got))
			require.False(t, got.Enabled)
			require.Len(t, got.Entries, 4, "nothing written while off; earlier rows stay")

			code, _, stderr = run(t, "log", "on", "--dsn", db.DSN, "--retention", "10ms")
			require.Equal(t, ExitUsage, code)
			require.Contains(t, stderr, "--retention")
		})
	}
}
