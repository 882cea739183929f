// Package sqldlm is a distributed lock manager that lives in the PostgreSQL,
// MySQL/MariaDB or SQLite database a service already runs: no ZooKeeper,
// etcd or Consul to deploy.
//
// # Setup
//
// Apply the schema once (or with every deploy; it is idempotent and safe to
// run from several processes at once), then create one [Client] per process
// and share it between goroutines:
//
//	if err := sqldlm.Migrate(ctx, db, nil); err != nil { ... }
//	c, err := sqldlm.New(db, sqldlm.Config{Owner: "conductor-3"})
//	if err != nil { ... }
//	defer c.Close()
//
// Import the dialect package of your database for its side effect, as you
// import a database/sql driver:
//
//	import _ "github.com/sqldlm/sqldlm/dialect/postgres" // or dialect/mysql, dialect/sqlite
//
// The dialect is then detected from db's driver (github.com/jackc/pgx/v5/stdlib,
// github.com/go-sql-driver/mysql or modernc.org/sqlite) unless
// Config.Dialect names it. This package imports no dialect itself, so a
// program links only the drivers it uses. sqldlm's tables live in the
// connection's current schema (PostgreSQL), database (MySQL) or file
// (SQLite); their names all start with sqldlm_.
//
// # Locks
//
// [Client.Lock] waits for a lock, [Client.TryLock] fails at once with a
// [*LockedError], [Client.Do] runs a function under a lock. A lock is
// [Shared] or [Exclusive]; [Lock.Upgrade] and [Lock.Downgrade] change it.
// Locks are held by their handles: two handles of one client conflict.
//
// # Leases
//
// A client holds one lease, renewed by one heartbeat about every TTL/3 with
// a single statement, however many locks it holds. Every expiry decision is
// made with the database server's clock, never a client's. The client trusts
// its lease only until the time it sent its last successful renewal plus the
// TTL, minus a tenth of the TTL; the server expires it no earlier, so when
// renewals fail the holder's [Lock.Done] closes, and [Lock.Err] says
// [ErrLost], before anyone else can be granted its locks. A waiter blocked
// by an expired holder takes the lock over itself; a crashed holder's locks
// are free within the TTL.
//
// # Fencing
//
// A lease cannot make side effects exclusive by itself: a process can pause
// after checking that it holds a lock and act after its lease expired. Make
// the writes that matter inside [Lock.Fence], which proves in your own
// transaction that the lock is still held and keeps it from being taken
// over until the transaction ends; or pass [Lock.Token], which strictly
// increases with every grant of a name, to a system that rejects older
// tokens.
//
// What a lease does not promise (server clock jumps, asynchronous replicas,
// SQLite's single writer) is listed in the README.
package sqldlm
