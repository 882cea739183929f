package sqldlm

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/internal/testknobs"
	"github.com/sqldlm/sqldlm/reaper"
)

// Client is a process's handle on sqldlm in one database. It is safe for
// concurrent use by many goroutines; a service normally has one, shared by
// all its workers (locks are held by handles, not by the client).
//
// A Client holds one lease in the database, created on first use and
// renewed by one heartbeat goroutine about every TTL/3. Every lock it grants
// hangs off that lease: if the lease is lost, all of them are.
type Client struct {
	db      *sql.DB
	hbdb    *sql.DB // renewals and the listener: Config.HeartbeatDB, or db
	dialect dialect.Dialect
	cfg     Config
	logger  *slog.Logger
	hooks   Hooks

	waiters  *waiters
	janitor  *janitor
	reaper   *reaper.Reaper
	listener atomic.Bool      // a notification listener is up (PostgreSQL)
	knobs    *testknobs.Knobs // sqldlm's own tests only (knobs.go); nil otherwise

	mu       sync.Mutex
	lease    *lease        // current lease; nil before first use and after a loss
	creating *leaseAttempt // the lease creation in flight, if any
	closing  bool          // Close has begun: no lease is installed and no goroutine started after it

	goroutines   sync.WaitGroup // heartbeats, transaction watchers and the listener
	stopBG       context.CancelFunc
	createCtx    context.Context // parent of lease creations; cancelled by Close
	stopCreating context.CancelFunc
	closeOnce    sync.Once
	closed       chan struct{}
}

// leaseAttempt is one lease creation in flight, which every caller that
// needs a lease meanwhile waits for, each with its own context.
type leaseAttempt struct {
	done chan struct{} // closed when err is set (nil: the lease is c.lease)
	err  error
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
	hbdb := db
	if cfg.HeartbeatDB != nil && cfg.HeartbeatDB != db {
		hbdb = cfg.HeartbeatDB
		if err := checkSchema(ctx, hbdb, d); err != nil {
			return nil, fmt.Errorf("Config.HeartbeatDB: %w", err)
		}
	}
	if a, ok := d.(dialect.TTLAdvisor); ok {
		// Only advice: a cluster whose failure detection outlasts the
		// TTL loses leases when a node fails, but works otherwise.
		if warning, err := a.AdviseTTL(ctx, db, cfg.TTL); err != nil {
			cfg.Logger.Debug("sqldlm: could not check the TTL against the cluster's settings", "error", err)
		} else if warning != "" {
			cfg.Logger.Warn("sqldlm: "+warning, "owner", cfg.Owner, "ttl", cfg.TTL)
		}
	}
	if cfg.Audit {
		err := d.SetAuditSettings(ctx, db, &dialect.AuditSettings{Enabled: true, Retention: cfg.AuditRetention})
		if err != nil {
			return nil, fmt.Errorf("sqldlm: turn the audit log on: %w", err)
		}
	}
	c := &Client{
		db:      db,
		hbdb:    hbdb,
		dialect: d,
		cfg:     cfg,
		logger:  cfg.Logger.With("owner", cfg.Owner),
		hooks:   cfg.Hooks,
		knobs:   knobsOf(cfg.Hooks),
		waiters: newWaiters(),
		closed:  make(chan struct{}),
	}
	c.janitor = newJanitor(c)
	go c.janitor.run()
	bgCtx, stopBG := context.WithCancel(context.Background())
	c.stopBG = stopBG
	c.createCtx, c.stopCreating = context.WithCancel(context.Background())
	if n, ok := d.(dialect.Notifier); ok {
		c.goStart(func() { c.listen(bgCtx, n) })
	}
	if cfg.ReapInterval > 0 {
		c.reaper = reaper.New(db, d, reaper.Config{
			Interval: cfg.ReapInterval,
			Logger:   c.logger,
			OnFreed: func(names []string) {
				for _, n := range names {
					c.waiters.wake(n)
				}
			},
			OnPass: func(r reaper.Result) {
				if r.Leases+r.IdleLocks > 0 {
					c.hooks.ReaperPass(r.Leases, r.Holds, r.Waiters, r.IdleLocks)
				}
			},
		})
		c.reaper.Start()
	}
	return c, nil
}

// Close releases every lock the client holds (deleting its lease), makes
// its blocked Lock calls return ErrClosed, stops its goroutines and waits
// for them. Locks it held report ErrReleased. It is idempotent; methods
// called after it return ErrClosed. It does not close the *sql.DB given to
// New. If the database cannot be reached, the lease expires by itself
// within the TTL. Each of its steps that talks to the database (deleting
// the lease, the last attempt at pending background cleanups) waits at most
// the TTL or 5 seconds, whichever is shorter.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.closed)
		if c.reaper != nil {
			c.reaper.Stop()
		}
		bound := c.cfg.closeTimeout()
		c.mu.Lock()
		c.closing = true
		l, creating := c.lease, c.creating
		c.mu.Unlock()
		// A lease creation in flight is cancelled; should its row be created
		// all the same, createLease deletes it.
		c.stopCreating()
		if creating != nil {
			t := time.NewTimer(bound)
			select {
			case <-creating.done:
			case <-t.C:
			}
			t.Stop()
		}
		if l != nil {
			l.end(ErrClosed, "client closed")
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			names, delErr := c.dialect.DeleteLease(ctx, c.db, l.id)
			cancel()
			if delErr != nil {
				err = fmt.Errorf("sqldlm: close: delete lease (it expires by itself within %s): %w", c.cfg.TTL, delErr)
			}
			for _, n := range names {
				c.waiters.wake(n)
			}
		}
		c.stopBG()
		c.janitor.halt()
		<-c.janitor.exited
		c.goroutines.Wait()
	})
	return err
}

func (c *Client) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// goStart runs f in a goroutine that Close waits for, unless Close has
// begun: then it does nothing and reports false. (A WaitGroup must not
// gain a goroutine once Wait may have begun.)
func (c *Client) goStart(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goLocked(f)
}

// goLocked is goStart for a caller that holds c.mu.
func (c *Client) goLocked(f func()) bool {
	if c.closing {
		return false
	}
	c.goroutines.Add(1)
	go func() {
		defer c.goroutines.Done()
		f()
	}()
	return true
}

// currentLease returns the client's live lease, creating one if needed.
// The creation runs outside c.mu, shared by every caller that needs a lease
// meanwhile; each waits for it until its own ctx ends.
func (c *Client) currentLease(ctx context.Context) (*lease, error) {
	for {
		c.mu.Lock()
		if c.closing || c.isClosed() {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if l := c.lease; l != nil && l.live() {
			c.mu.Unlock()
			return l, nil
		}
		a := c.creating
		if a == nil {
			a = &leaseAttempt{done: make(chan struct{})}
			c.creating = a
			go c.createLease(a)
		}
		c.mu.Unlock()
		select {
		case <-a.done:
			if a.err != nil {
				return nil, a.err
			}
			// The new lease is now c.lease, unless it has ended already.
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.closed:
			return nil, ErrClosed
		}
	}
}

// createLease creates a lease for attempt a and installs it as the
// client's lease. The creation waits at most the TTL (an answer after it
// would be refused anyway) and ends when Close cancels it; a lease created
// after Close has begun is deleted at once.
func (c *Client) createLease(a *leaseAttempt) {
	defer close(a.done)
	ctx, cancel := context.WithTimeout(c.createCtx, c.cfg.createLeaseTimeout())
	l, err := c.newLease(ctx)
	cancel()
	c.mu.Lock()
	c.creating = nil
	if err == nil && c.closing {
		c.mu.Unlock()
		c.logger.Debug("sqldlm: lease created after the client closed, deleting it", "lease_id", l.id)
		dctx, dcancel := context.WithTimeout(context.Background(), c.cfg.closeTimeout())
		defer dcancel()
		if _, delErr := c.dialect.DeleteLease(dctx, c.db, l.id); delErr != nil {
			c.logger.Debug("sqldlm: delete lease created after close (it expires by itself)", "lease_id", l.id, "error", delErr)
		}
		a.err = ErrClosed
		return
	}
	defer c.mu.Unlock()
	if err != nil {
		if c.closing {
			err = ErrClosed
		}
		a.err = err
		return
	}
	c.lease = l
	l.start()
}

// dropLease forgets l if it is the current lease.
func (c *Client) dropLease(l *lease) {
	c.mu.Lock()
	if c.lease == l {
		c.lease = nil
	}
	c.mu.Unlock()
}

// abandon withdraws request id of lease l. A withdrawal is final: the
// database records it, and no statement of the request that runs after it
// (a retry, or one still on its way or waiting in the server when the
// client gave up) can grant or queue the request; one that ran before it is
// undone by it. So one withdrawal that succeeds is enough. It is tried at
// once for a short time (the caller has given up and should get its answer
// promptly), then by the janitor for as long as the lease lives (the
// lease's deletion covers it after that).
func (c *Client) abandon(l *lease, name string, id int64) {
	c.withdrawNow(l, func(ctx context.Context) error { return c.withdraw(ctx, l, name, id) }, func(err error) {
		c.logger.Debug("sqldlm: withdrawing a request failed, retrying in the background", "lock_name", name, "error", err)
		c.janitor.abandon(l, name, id)
	})
}

// withdrawNow runs withdraw, bounded by withdrawBound, before the operation
// whose outcome is unknown returns, so that the caller trying again at once
// does not meet its own abandoned request; if it fails, later hands it to
// the janitor. A lease that has ended needs nothing: its deletion covers
// every request of it.
func (c *Client) withdrawNow(l *lease, withdraw func(context.Context) error, later func(error)) {
	if !l.live() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.withdrawBound())
	err := withdraw(ctx)
	cancel()
	if err != nil {
		later(err)
	}
}

// withdraw withdraws request id of lease l for good (deleting its waiter
// row and any hold it obtained) and wakes the waiters of the names it
// freed.
func (c *Client) withdraw(ctx context.Context, l *lease, name string, id int64) error {
	res, err := c.dialect.Abandon(ctx, c.db, &dialect.AbandonParams{Name: name, LeaseID: l.id, RequestID: id})
	if err != nil {
		return err
	}
	for _, n := range res.Freed {
		c.waiters.wakeHead(n)
	}
	return nil
}

// notified reports whether releases currently arrive as notifications.
func (c *Client) notified() bool { return c.listener.Load() }

// listen keeps a notification listener up (PostgreSQL), reconnecting with
// backoff; while it is down, waiters poll at the short interval.
func (c *Client) listen(ctx context.Context, n dialect.Notifier) {
	wait := newExpBackoff(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		err := n.Listen(ctx, c.hbdb, func() {
			c.listener.Store(true)
			c.waiters.wakeAll() // releases may have been missed while down
			wait.reset()
		}, c.wakeup)
		c.listener.Store(false)
		if ctx.Err() != nil {
			return
		}
		c.logger.Debug("sqldlm: notification listener down, polling", "error", err)
		if !sleepCtx(ctx, wait.next()) {
			return
		}
	}
}

// wakeup routes a notification to the request it names (with the grant
// it may carry), or to every waiter of its name.
func (c *Client) wakeup(w dialect.Wakeup) {
	if w.RequestID == 0 {
		c.waiters.wake(w.Name)
		return
	}
	c.waiters.wakeRequest(w.Name, w.RequestID, wakeup{lease: w.LeaseID, token: w.Token})
}

// Owner returns the owner name the client shows in introspection.
func (c *Client) Owner() string { return c.cfg.Owner }

// TTL returns the client's lease time-to-live.
func (c *Client) TTL() time.Duration { return c.cfg.TTL }
