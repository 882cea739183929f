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
	defer discard(conn)
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
		if w, ok := parseGrant(rest); ok {
			return w
		}
		return dialect.Wakeup{Name: payload}
	}
	lease, rest, ok := strings.Cut(payload, " ")
	if !ok {
		return dialect.Wakeup{Name: payload}
	}
	req, name, ok := strings.Cut(rest, " ")
	if !ok || name == "" {
		return dialect.Wakeup{Name: payload}
	}
	l, err1 := strconv.ParseInt(lease, 10, 64)
	r, err2 := strconv.ParseInt(req, 10, 64)
	if err1 != nil || err2 != nil || r == 0 {
		return dialect.Wakeup{Name: payload}
	}
	return dialect.Wakeup{Name: name, LeaseID: l, RequestID: r}
}

// parseGrant reads "<lease id> <request id> <token> <name>".
func parseGrant(s string) (dialect.Wakeup, bool) {
	var nums [3]int64
	for i := range nums {
		field, rest, ok := strings.Cut(s, " ")
		if !ok {
			return dialect.Wakeup{}, false
		}
		n, err := strconv.ParseInt(field, 10, 64)
		if err != nil {
			return dialect.Wakeup{}, false
		}
		nums[i], s = n, rest
	}
	if s == "" || nums[1] == 0 || nums[2] <= 0 {
		return dialect.Wakeup{}, false
	}
	return dialect.Wakeup{Name: s, LeaseID: nums[0], RequestID: nums[1], Token: nums[2]}, true
}
