package bench

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/sqldlm/sqldlm/internal/dsn"
)

// stmtCounter counts the statements a pool sends to the server: every
// execution of a query, BEGIN, COMMIT and ROLLBACK, but not the prepares a
// driver may add (counted apart) nor pings.
type stmtCounter struct {
	statements atomic.Int64
	prepares   atomic.Int64
}

func (c *stmtCounter) load() (statements, prepares int64) {
	return c.statements.Load(), c.prepares.Load()
}

// openPool opens a pool of at most size connections on the database d
// names, counting its statements in the returned counter. Idle connections
// are kept (MaxIdleConns = size), so a cell never pays for reconnecting.
//
// On PostgreSQL the count comes from a pgx tracer, which keeps the driver's
// connection type intact (sqldlm's listener needs *stdlib.Conn); elsewhere
// the driver's connections are wrapped.
func openPool(d dsn.DSN, size int) (*sql.DB, *stmtCounter, error) {
	n := &stmtCounter{}
	db, err := openPoolCounted(d, size, n)
	return db, n, err
}

// openPoolCounted is openPool counting into n, which several pools may share.
func openPoolCounted(d dsn.DSN, size int, n *stmtCounter) (*sql.DB, error) {
	var db *sql.DB
	switch d.DriverName {
	case "pgx":
		cfg, err := pgx.ParseConfig(d.DriverDSN)
		if err != nil {
			return nil, fmt.Errorf("parse postgres DSN: %w", err)
		}
		cfg.Tracer = pgxTracer{n}
		db = stdlib.OpenDB(*cfg)
	default:
		probe, err := sql.Open(d.DriverName, d.DriverDSN)
		if err != nil {
			return nil, err
		}
		drv := probe.Driver()
		probe.Close()
		var base driver.Connector
		if dc, ok := drv.(driver.DriverContext); ok {
			if base, err = dc.OpenConnector(d.DriverDSN); err != nil {
				return nil, err
			}
		} else {
			base = dsnConnector{drv, d.DriverDSN}
		}
		db = sql.OpenDB(countingConnector{base: base, drv: drv, n: n})
	}
	db.SetMaxOpenConns(size)
	db.SetMaxIdleConns(size)
	return db, nil
}

// pgxTracer counts every query pgx runs (BEGIN and COMMIT included).
type pgxTracer struct{ n *stmtCounter }

func (t pgxTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	t.n.statements.Add(1)
	return ctx
}

func (pgxTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (t pgxTracer) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	t.n.prepares.Add(1)
	return ctx
}

func (pgxTracer) TracePrepareEnd(context.Context, *pgx.Conn, pgx.TracePrepareEndData) {}

// dsnConnector is a driver.Connector for drivers without OpenConnector.
type dsnConnector struct {
	drv driver.Driver
	dsn string
}

func (c dsnConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c dsnConnector) Driver() driver.Driver                        { return c.drv }

// countingConnector wraps a driver's connections to count statements. Its
// Driver is the wrapped driver, so sqldlm still detects the dialect.
type countingConnector struct {
	base driver.Connector
	drv  driver.Driver
	n    *stmtCounter
}

func (c countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.base.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, n: c.n}, nil
}

func (c countingConnector) Driver() driver.Driver { return c.drv }

// countingConn passes everything to the driver's connection. Where the
// driver lacks an optional interface it answers as database/sql expects of
// a driver without it (driver.ErrSkip, or nothing to do).
type countingConn struct {
	driver.Conn
	n *stmtCounter
}

var (
	_ driver.ExecerContext      = (*countingConn)(nil)
	_ driver.QueryerContext     = (*countingConn)(nil)
	_ driver.ConnPrepareContext = (*countingConn)(nil)
	_ driver.ConnBeginTx        = (*countingConn)(nil)
	_ driver.Pinger             = (*countingConn)(nil)
	_ driver.SessionResetter    = (*countingConn)(nil)
	_ driver.Validator          = (*countingConn)(nil)
	_ driver.NamedValueChecker  = (*countingConn)(nil)
)

func (c *countingConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	var s driver.Stmt
	var err error
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		s, err = p.PrepareContext(ctx, query)
	} else {
		s, err = c.Conn.Prepare(query)
	}
	if err != nil {
		return nil, err
	}
	c.n.prepares.Add(1)
	return &countingStmt{Stmt: s, conn: c}, nil
}

func (c *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := c.Conn.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	r, err := e.ExecContext(ctx, query, args)
	if err != driver.ErrSkip { //nolint:errorlint // drivers return ErrSkip itself
		c.n.statements.Add(1)
	}
	return r, err
}

func (c *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := c.Conn.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	r, err := q.QueryContext(ctx, query, args)
	if err != driver.ErrSkip { //nolint:errorlint // drivers return ErrSkip itself
		c.n.statements.Add(1)
	}
	return r, err
}

func (c *countingConn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	var tx driver.Tx
	var err error
	if b, ok := c.Conn.(driver.ConnBeginTx); ok {
		tx, err = b.BeginTx(ctx, opts)
	} else {
		if opts.Isolation != 0 || opts.ReadOnly {
			return nil, fmt.Errorf("bench: driver %T supports no transaction options", c.Conn)
		}
		tx, err = c.Conn.Begin() //nolint:staticcheck // the fallback database/sql itself uses
	}
	if err != nil {
		return nil, err
	}
	c.n.statements.Add(1)
	return countingTx{tx, c.n}, nil
}

func (c *countingConn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *countingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *countingConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *countingConn) CheckNamedValue(nv *driver.NamedValue) error {
	if v, ok := c.Conn.(driver.NamedValueChecker); ok {
		return v.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

type countingTx struct {
	driver.Tx
	n *stmtCounter
}

func (t countingTx) Commit() error {
	t.n.statements.Add(1)
	return t.Tx.Commit()
}

func (t countingTx) Rollback() error {
	t.n.statements.Add(1)
	return t.Tx.Rollback()
}

type countingStmt struct {
	driver.Stmt
	conn *countingConn
}

var (
	_ driver.StmtExecContext   = (*countingStmt)(nil)
	_ driver.StmtQueryContext  = (*countingStmt)(nil)
	_ driver.NamedValueChecker = (*countingStmt)(nil)
)

func (s *countingStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	s.conn.n.statements.Add(1)
	if e, ok := s.Stmt.(driver.StmtExecContext); ok {
		return e.ExecContext(ctx, args)
	}
	vals, err := namedToValues(args)
	if err != nil {
		return nil, err
	}
	return s.Stmt.Exec(vals) //nolint:staticcheck // the fallback database/sql itself uses
}

func (s *countingStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	s.conn.n.statements.Add(1)
	if q, ok := s.Stmt.(driver.StmtQueryContext); ok {
		return q.QueryContext(ctx, args)
	}
	vals, err := namedToValues(args)
	if err != nil {
		return nil, err
	}
	return s.Stmt.Query(vals) //nolint:staticcheck // the fallback database/sql itself uses
}

// CheckNamedValue asks the statement, then its connection, as database/sql
// would ask them when not wrapped.
func (s *countingStmt) CheckNamedValue(nv *driver.NamedValue) error {
	if v, ok := s.Stmt.(driver.NamedValueChecker); ok {
		return v.CheckNamedValue(nv)
	}
	return s.conn.CheckNamedValue(nv)
}

func namedToValues(args []driver.NamedValue) ([]driver.Value, error) {
	vals := make([]driver.Value, len(args))
	for i, a := range args {
		if a.Name != "" {
			return nil, fmt.Errorf("bench: driver does not support named parameters")
		}
		vals[i] = a.Value
	}
	return vals, nil
}
