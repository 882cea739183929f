package sqldlm

import (
	"cmp"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/sqldlm/sqldlm/dialect"
)

// Defaults and limits of [Config].
const (
	// TTLDefault is the lease time-to-live when Config.TTL is zero.
	TTLDefault = 15 * time.Second
	// TTLMin is the shortest lease time-to-live accepted: below it, one slow
	// round trip to the database would cost a client all its locks.
	TTLMin = time.Second
	// ConnectTimeoutDefault bounds how long [New] waits for the database when
	// Config.ConnectTimeout is zero.
	ConnectTimeoutDefault = 15 * time.Second
	// OwnerMaxBytes is the longest owner string accepted.
	OwnerMaxBytes = 255
	// AuditRetentionDefault is how long audit rows are kept when
	// Config.AuditRetention is zero.
	AuditRetentionDefault = 7 * 24 * time.Hour
	// WatchIntervalDefault is how often watchers and leader observers read
	// the database when Config.WatchInterval is zero.
	WatchIntervalDefault = time.Second
	// ReapDisabled as Config.ReapInterval turns the client's reaper off.
	ReapDisabled time.Duration = -1
)

// Config configures a [Client]. The zero value of every field selects its
// default.
type Config struct {
	// Dialect is the database's dialect: postgres.Dialect(), mysql.Dialect()
	// or sqlite.Dialect(). When nil it is detected from db.Driver(); set it
	// when you use a driver sqldlm does not recognise.
	Dialect dialect.Dialect

	// Owner names this client in introspection and logs, for example
	// "conductor-3". At most 255 bytes of valid UTF-8, without NUL bytes.
	// Defaults to "hostname/pid".
	Owner string

	// TTL is the lease time-to-live: how long after the client's last
	// successful renewal its locks stay held if it stops renewing (crashes,
	// pauses, loses the network). The heartbeat renews about every TTL/3.
	// Must be at least TTLMin (1s). Defaults to TTLDefault (15s).
	TTL time.Duration

	// ConnectTimeout bounds how long New waits for the database to answer
	// its schema check. Defaults to ConnectTimeoutDefault (15s).
	ConnectTimeout time.Duration

	// ReapInterval is how often the client's reaper deletes dead leases
	// (with their holds and waiters) and idle lock rows. Defaults to the TTL.
	// ReapDisabled (-1) turns the client's reaper off: run `sqldlm reap`
	// somewhere instead, or rely on waiters, which take over expired holders
	// themselves.
	ReapInterval time.Duration

	// LockDelay holds back a name whose holder died (its lease expired or
	// was broken) without releasing it: the name is granted again only once
	// the holder's lease has been dead for LockDelay, so that requests the
	// dead holder still had in flight drain first (Chubby's lock-delay). A
	// cleanly released name is never delayed. Defaults to 0.
	LockDelay time.Duration

	// Audit turns on the schema's audit log, if it is not on already: one
	// row per grant, upgrade, downgrade, release, takeover, expiry and
	// operator break, written in the same transaction as the change (see
	// [Client.AuditLog] and `sqldlm log`). The setting belongs to the schema,
	// not to the client: once on, every client's changes are logged, so the
	// log has no holes. False leaves the setting alone; `sqldlm log off`
	// turns it off. Defaults to false.
	Audit bool

	// AuditRetention is how long audit rows are kept before the reaper
	// deletes them, set with Audit. At least 1s; defaults to
	// AuditRetentionDefault (7 days).
	AuditRetention time.Duration

	// HeartbeatDB, when set, is a connection pool of the client's own for
	// its lease renewals and, on PostgreSQL, its wake-up listener. Open it
	// with db's DSN (the same database and schema) and SetMaxOpenConns(2)
	// (3 on PostgreSQL): then a load that takes every connection of db for
	// longer than the TTL cannot delay a renewal, and no lease is lost to
	// it. When nil, renewals queue for db's connections with the
	// application's queries (keep db's MaxOpenConns above the application's
	// concurrency), and on PostgreSQL the listener keeps one of them. The
	// client never closes it.
	HeartbeatDB *sql.DB

	// WatchInterval is how often [Client.ObserveLeader] and [Client.Watch]
	// read the database when nothing woke them earlier (a release in this
	// process, a notification on PostgreSQL): the longest a change, or the
	// expiry of a crashed member or leader, goes unreported. A semaphore's
	// first waiter reads its permits at least this often, and at least
	// every 200ms. At least 10ms; defaults to WatchIntervalDefault (1s).
	WatchInterval time.Duration

	// Hooks receives the client's events for metrics (see package
	// sqldlmprom). Defaults to none.
	Hooks Hooks

	// Logger receives the client's log records. Defaults to discarding them:
	// the library prints nothing by itself.
	Logger *slog.Logger
}

// withDefaults returns a copy of c with defaults filled in, or an error
// naming the first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.TTL < 0 {
		return c, fmt.Errorf("sqldlm: Config.TTL is negative (%s): use a duration of at least %s, or 0 for the default %s", c.TTL, TTLMin, TTLDefault)
	}
	if c.TTL != 0 && c.TTL < TTLMin {
		return c, fmt.Errorf("sqldlm: Config.TTL %s is below the minimum %s: one slow round trip would lose every lock", c.TTL, TTLMin)
	}
	if c.LockDelay < 0 {
		return c, fmt.Errorf("sqldlm: Config.LockDelay is negative (%s)", c.LockDelay)
	}
	if c.ConnectTimeout < 0 {
		return c, fmt.Errorf("sqldlm: Config.ConnectTimeout is negative (%s)", c.ConnectTimeout)
	}
	if c.ReapInterval < 0 && c.ReapInterval != ReapDisabled {
		return c, fmt.Errorf("sqldlm: Config.ReapInterval is negative (%s): use sqldlm.ReapDisabled to turn the reaper off", c.ReapInterval)
	}
	if c.AuditRetention < 0 || (c.AuditRetention > 0 && c.AuditRetention < time.Second) {
		return c, fmt.Errorf("sqldlm: Config.AuditRetention %s: use at least 1s, or 0 for the default %s", c.AuditRetention, AuditRetentionDefault)
	}
	if c.WatchInterval < 0 || (c.WatchInterval > 0 && c.WatchInterval < 10*time.Millisecond) {
		return c, fmt.Errorf("sqldlm: Config.WatchInterval %s: use at least 10ms, or 0 for the default %s", c.WatchInterval, WatchIntervalDefault)
	}
	c.WatchInterval = cmp.Or(c.WatchInterval, WatchIntervalDefault)
	c.AuditRetention = cmp.Or(c.AuditRetention, AuditRetentionDefault)
	c.TTL = cmp.Or(c.TTL, TTLDefault)
	c.ReapInterval = cmp.Or(c.ReapInterval, c.TTL)
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, ConnectTimeoutDefault)
	if c.Owner == "" {
		c.Owner = defaultOwner()
	}
	if err := validateOwner(c.Owner); err != nil {
		return c, err
	}
	if c.Hooks == nil {
		c.Hooks = NopHooks{}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// How the TTL becomes timings: every duration the client derives from its
// TTL is one of these methods, called on a Config with its defaults filled
// in. (The TTL itself also goes to the database with each lease, which
// renews and expires the lease from its own row, and to Fence, as the idle
// timeout of a fenced transaction.)

// renewInterval is how often the heartbeat renews the lease: a third of the
// TTL.
func (c Config) renewInterval() time.Duration { return c.TTL / 3 }

// renewRetry is how soon the heartbeat tries a failed renewal again.
func (c Config) renewRetry() time.Duration { return min(c.renewInterval()/4, 250*time.Millisecond) }

// trustMargin is how much earlier than the server the client gives up a
// lease: a tenth of the TTL covers clock rate differences and scheduling
// delays.
func (c Config) trustMargin() time.Duration { return mutantMargin(c.TTL / 10) }

// trustFor is how long after a renewal (or the lease's creation) was sent
// the client trusts the lease without a later one: its local deadline is
// that send time plus trustFor.
func (c Config) trustFor() time.Duration { return c.TTL - c.trustMargin() }

// createLeaseTimeout bounds the creation of a lease: an answer after the
// TTL would be refused anyway (see errSlowLease).
func (c Config) createLeaseTimeout() time.Duration { return c.TTL }

// deleteLeaseFor is how long the janitor keeps trying to delete the row of
// a lease the client gave up: after it, the lease has expired in the
// database anyway.
func (c Config) deleteLeaseFor() time.Duration { return c.TTL }

// releaseBound is how long Release waits for the database before it leaves
// the release to the janitor.
func (c Config) releaseBound() time.Duration { return min(c.TTL/2, 5*time.Second) }

// settleBound is how long a statement that settles an unknown outcome (an
// upgrade's withdrawal, a downgrade sent again, a lost handle's delete) may
// take before the janitor, or giving the lock up, takes over.
func (c Config) settleBound() time.Duration { return min(c.TTL/4, 2*time.Second) }

// withdrawBound is how long a caller that gave up waits for the withdrawal
// of its request before the janitor takes it over.
func (c Config) withdrawBound() time.Duration { return min(c.TTL/10, 250*time.Millisecond) }

// cleanupTimeout bounds one attempt at a background cleanup: a janitor
// task, or a check of whether a TryLockTx transaction has ended.
func (c Config) cleanupTimeout() time.Duration { return min(c.TTL/2, 5*time.Second) }

// closeTimeout bounds each step of Close that talks to the database
// (deleting the lease, the janitor's final pass), and the deletion of a
// lease created after Close began.
func (c Config) closeTimeout() time.Duration { return min(c.TTL, 5*time.Second) }

func defaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	owner := host + "/" + strconv.Itoa(os.Getpid())
	if len(owner) > OwnerMaxBytes {
		owner = owner[len(owner)-OwnerMaxBytes:]
	}
	return owner
}

func validateOwner(owner string) error {
	switch {
	case len(owner) > OwnerMaxBytes:
		return fmt.Errorf("%w: Config.Owner is %d bytes long: the limit is %d; shorten it", ErrInvalidOwner, len(owner), OwnerMaxBytes)
	case !utf8.ValidString(owner):
		return fmt.Errorf("%w: Config.Owner %q is not valid UTF-8", ErrInvalidOwner, owner)
	}
	for i := 0; i < len(owner); i++ {
		if owner[i] == 0 {
			return fmt.Errorf("%w: Config.Owner %q contains a NUL byte at %d", ErrInvalidOwner, owner, i)
		}
	}
	return nil
}
