package postgres

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/sqlutil"
)

var _ dialect.Notifier = postgresDialect{}

// channelQuery names the notification channel of the connection's current
// schema; the lock functions notify sqldlm_channel(), which computes the same.
// Schemas in one database get different channels, so they do not wake each
// other's waiters.
const channelQuery = `SELECT 'sqldlm_' || substr(md5(current_schema()), 1, 16)`

// Listen takes a connection of its own from db, LISTENs on the schema's
// channel, calls ready, then calls onWake with each notification until ctx
// ends or the connection fails. The connection never goes back to the
// pool: it is closed, so that no pooled connection is left listening.
func (d postgresDialect) Listen(ctx context.Context, db *sql.DB, ready func(), onWake func(dialect.Wakeup)) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("listen: %w", d.ClassifyError(err))
	}
	defer conn.Close()
	defer sqlutil.Discard(conn)
	err = conn.Raw(func(driverConn any) error {
		sc, ok := driverConn.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("driver connection is %T, not pgx's *stdlib.Conn", driverConn)
		}
		pc := sc.Conn()
		var channel sql.NullString
		if err := pc.QueryRow(ctx, channelQuery).Scan(&channel); err != nil {
			return err
		}
		if !channel.Valid {
			return fmt.Errorf("no current schema: search_path names no existing schema")
		}
		if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{channel.String}.Sanitize()); err != nil {
			return err
		}
		ready()
		for {
			n, err := pc.WaitForNotification(ctx)
			if err != nil {
				return err
			}
			onWake(parseWakeup(n.Payload))
		}
	})
	return fmt.Errorf("listen: %w", d.ClassifyError(err))
}

// parseWakeup reads a notification's payload. sqldlm_release_next (schema
// version 5) sends "g <lease id> <request id> <token> <name>" when it has
// granted the name to that request; sqldlm_wake (version 4) sends
// "<lease id> <request id> <name>" for one waiter at the head of the name's
// queue. Anything else (a bare name, as version 3's functions sent while a
// migration runs) wakes every waiter of the payload taken as a name: a
// wake-up too many costs one acquire attempt, one too few a poll, and a
// grant whose notification is lost is found by the waiter's next attempt.
func parseWakeup(payload string) dialect.Wakeup {
	if rest, ok := strings.CutPrefix(payload, "g "); ok {
		if n, name, ok := cutNumbers(rest, 3); ok && n[1] != 0 && n[2] > 0 {
			return dialect.Wakeup{Name: name, LeaseID: n[0], RequestID: n[1], Token: n[2]}
		}
		return dialect.Wakeup{Name: payload}
	}
	if n, name, ok := cutNumbers(payload, 2); ok && n[1] != 0 {
		return dialect.Wakeup{Name: name, LeaseID: n[0], RequestID: n[1]}
	}
	return dialect.Wakeup{Name: payload}
}

// cutNumbers reads k space-separated integers from the front of s and
// returns them with the rest of s, which must not be empty.
func cutNumbers(s string, k int) ([]int64, string, bool) {
	nums := make([]int64, k)
	for i := range nums {
		field, rest, ok := strings.Cut(s, " ")
		if !ok {
			return nil, "", false
		}
		n, err := strconv.ParseInt(field, 10, 64)
		if err != nil {
			return nil, "", false
		}
		nums[i], s = n, rest
	}
	return nums, s, s != ""
}
