//go:build linux

package dbinstance_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/internal/dbinstance"
)

// TestInstance starts a server of each kind under libfaketime and checks
// every fault the package offers against it.
func TestInstance(t *testing.T) {
	for _, kind := range []string{"postgres", "mysql"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			began := time.Now()
			inst := dbinstance.Start(t, kind, dbinstance.Options{FakeTime: true})
			t.Logf("%s started in %v at %s", kind, time.Since(began).Round(time.Millisecond), inst.Addr())
			ctx := context.Background()
			db := inst.Open(t)
			db.SetMaxIdleConns(0) // every query on a fresh connection, as after a crash

			_, err := db.ExecContext(ctx, `CREATE TABLE kv (k INT PRIMARY KEY, v INT NOT NULL)`)
			require.NoError(t, err)
			_, err = db.ExecContext(ctx, `INSERT INTO kv (k, v) VALUES (1, 10)`)
			require.NoError(t, err)

			// Paused, the server answers nothing: not on a new connection, not
			// on one open before the pause (a PostgreSQL backend process).
			open, err := db.Conn(ctx)
			require.NoError(t, err)
			require.NoError(t, open.PingContext(ctx))
			inst.Pause()
			qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			err = open.QueryRowContext(qctx, `SELECT v FROM kv WHERE k = 1`).Scan(new(int))
			cancel()
			require.Error(t, err, "a paused server answered on an open connection")
			_ = open.Close()
			qctx, cancel = context.WithTimeout(ctx, 500*time.Millisecond)
			err = db.QueryRowContext(qctx, `SELECT v FROM kv WHERE k = 1`).Scan(new(int))
			cancel()
			require.Error(t, err, "a paused server answered on a new connection")
			inst.Resume()
			var v int
			require.NoError(t, db.QueryRowContext(ctx, `SELECT v FROM kv WHERE k = 1`).Scan(&v))
			require.Equal(t, 10, v)

			// Committed data survives kill -9 and crash recovery.
			_, err = db.ExecContext(ctx, `UPDATE kv SET v = 11 WHERE k = 1`)
			require.NoError(t, err)
			inst.Crash()
			require.False(t, inst.Running())
			qctx, cancel = context.WithTimeout(ctx, 2*time.Second)
			err = db.PingContext(qctx)
			cancel()
			require.Error(t, err, "a crashed server answered")
			began = time.Now()
			require.NoError(t, inst.Start())
			t.Logf("%s restarted after kill -9 in %v", kind, time.Since(began).Round(time.Millisecond))
			require.NoError(t, db.QueryRowContext(ctx, `SELECT v FROM kv WHERE k = 1`).Scan(&v))
			require.Equal(t, 11, v)

			// The server clock moves with the offset, and back.
			nowSQL := map[string]string{"postgres": `SELECT clock_timestamp()`, "mysql": `SELECT SYSDATE(6)`}[kind]
			skew := func() time.Duration {
				t.Helper()
				var ts sqlTime
				require.NoError(t, db.QueryRowContext(ctx, nowSQL).Scan(&ts))
				return ts.t.Sub(time.Now())
			}
			require.Less(t, skew().Abs(), 5*time.Second)
			require.NoError(t, inst.SetClockOffset(time.Hour))
			require.InDelta(t, time.Hour.Seconds(), skew().Seconds(), 5)
			require.NoError(t, inst.SetClockOffset(-time.Hour))
			require.InDelta(t, -time.Hour.Seconds(), skew().Seconds(), 5)
			require.NoError(t, inst.SetClockOffset(0))
			require.Less(t, skew().Abs(), 5*time.Second)

			// A session killed from the server side loses its connection.
			conn, err := db.Conn(ctx)
			require.NoError(t, err)
			defer conn.Close()
			var id int64
			idSQL := map[string]string{"postgres": `SELECT pg_backend_pid()`, "mysql": `SELECT CONNECTION_ID()`}[kind]
			require.NoError(t, conn.QueryRowContext(ctx, idSQL).Scan(&id))
			sessions, err := inst.Sessions(ctx)
			require.NoError(t, err)
			found := false
			for _, s := range sessions {
				found = found || s.ID == id
			}
			require.True(t, found, "session %d not listed in %+v", id, sessions)
			require.NoError(t, inst.KillSession(ctx, id))
			require.Eventually(t, func() bool {
				return conn.QueryRowContext(ctx, `SELECT 1`).Scan(new(int)) != nil
			}, 10*time.Second, 20*time.Millisecond)

			// Stopped, then started again: still there.
			inst.Stop()
			require.False(t, inst.Running())
			require.NoError(t, inst.Start())
			require.NoError(t, db.QueryRowContext(ctx, `SELECT v FROM kv WHERE k = 1`).Scan(&v))
			require.Equal(t, 11, v)
		})
	}
}

// sqlTime scans a timestamp as either driver returns it.
type sqlTime struct{ t time.Time }

func (s *sqlTime) Scan(src any) error {
	switch v := src.(type) {
	case time.Time:
		s.t = v
		return nil
	case []byte:
		return s.parse(string(v))
	case string:
		return s.parse(v)
	}
	var nt sql.NullTime
	if err := nt.Scan(src); err != nil {
		return err
	}
	s.t = nt.Time
	return nil
}

func (s *sqlTime) parse(v string) error {
	t, err := time.ParseInLocation("2006-01-02 15:04:05.999999", v, time.UTC)
	s.t = t
	return err
}
