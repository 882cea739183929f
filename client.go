package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
)

// Client is a process's handle on sqldlm in one database. It is safe for
// concurrent use by many goroutines; a service normally has one.
type Client struct {
	db      *sql.DB
	dialect dialect.Dialect
	cfg     Config
	logger  *slog.Logger

	closeOnce sync.Once
	closed    chan struct{}
}

// New returns a Client for db. It checks, within Config.ConnectTimeout, that
// the database answers and that sqldlm's schema is at the version this
// build uses; otherwise it returns an error wrapping ErrSchema that says how
// to migrate. Invalid configuration is reported with the field's name.
//
// New never closes db: the caller owns it, and it must outlive the Client.
func New(db *sql.DB, cfg Config) (*Client, error) {
	if db == nil {
		return nil, errors.New("sqldlm: New needs a *sql.DB, got nil")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	d, err := resolveDialect(db, cfg.Dialect)
	if err != nil {
		return nil, err
	}
	cfg.Dialect = d
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
	defer cancel()
	if err := checkSchema(ctx, db, d); err != nil {
		return nil, err
	}
	return &Client{
		db:      db,
		dialect: d,
		cfg:     cfg,
		logger:  cfg.Logger.With("owner", cfg.Owner),
		closed:  make(chan struct{}),
	}, nil
}

// Close stops the client. It is idempotent; methods called after it return
// ErrClosed. It does not close the *sql.DB given to New.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return nil
}

// Dialect returns the client's dialect.
func (c *Client) Dialect() dialect.Dialect { return c.dialect }

// Owner returns the owner name the client shows in introspection.
func (c *Client) Owner() string { return c.cfg.Owner }

// TTL returns the client's lease time-to-live.
func (c *Client) TTL() time.Duration { return c.cfg.TTL }
