// Package sqldlm is a distributed lock manager that lives in the PostgreSQL,
// MySQL/MariaDB or SQLite database a service already runs: no ZooKeeper,
// etcd or Consul to deploy.
//
// # Setup
//
// Apply the schema once (or with every deploy; it is idempotent and safe to
// run from several processes at once), then create one [Client] per process:
//
//	if err := sqldlm.Migrate(ctx, db, nil); err != nil { ... }
//	c, err := sqldlm.New(db, sqldlm.Config{Owner: "conductor-3"})
//	if err != nil { ... }
//	defer c.Close()
//
// The dialect is detected from db's driver (github.com/jackc/pgx/v5/stdlib,
// github.com/go-sql-driver/mysql or modernc.org/sqlite) unless
// Config.Dialect names it. sqldlm's tables live in the connection's current
// schema (PostgreSQL), database (MySQL) or file (SQLite); their names all
// start with sqldlm_.
//
// # Time
//
// Every expiry decision is made with the database server's clock, never a
// client's. Leases are renewed by one heartbeat per client, whatever the
// number of locks it holds.
package sqldlm
