package sqldlm

import (
	"context"
	"database/sql"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// cleanupFaultDialect makes every Release and Abandon fail (the connection
// lost) while fail is set, unless the caller's ctx carries cleanupAllowed:
// the release or withdrawal that was due goes to the janitor, and the
// janitor's attempts fail too. lostAcquires answers of Acquire are lost
// after the statement ran (a grant the client does not see).
type cleanupFaultDialect struct {
	dialect.Dialect
	mu           sync.Mutex
	fail         bool
	lostAcquires int
}

type cleanupAllowed struct{}

func (d *cleanupFaultDialect) failing(ctx context.Context) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fail && ctx.Value(cleanupAllowed{}) == nil
}

func (d *cleanupFaultDialect) Acquire(ctx context.Context, db *sql.DB, p *dialect.AcquireParams) (*dialect.AcquireResult, error) {
	res, err := d.Dialect.Acquire(ctx, db, p)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil && d.lostAcquires > 0 {
		d.lostAcquires--
		return nil, errConnLost
	}
	return res, err
}

func (d *cleanupFaultDialect) Release(ctx context.Context, db *sql.DB, p *dialect.HoldRef) (bool, error) {
	if d.failing(ctx) {
		return false, errConnLost
	}
	return d.Dialect.Release(ctx, db, p)
}

func (d *cleanupFaultDialect) Abandon(ctx context.Context, db *sql.DB, p *dialect.AbandonParams) (*dialect.AbandonResult, error) {
	if d.failing(ctx) {
		return nil, errConnLost
	}
	return d.Dialect.Abandon(ctx, db, p)
}

// TestOwnPendingCleanupIsNotInTheWay: a hold of the client's own that the
// client has given up, but whose release or withdrawal did not reach the
// database and was left to the janitor (which cannot reach it either),
// does not refuse or hold up the client's next request of the name: the
// request runs that cleanup at once and asks again. For each way such a
// hold is left (a lock released while the database was unreachable; a
// TryLock whose grant's answer was lost twice, so that it withdrew the
// request) × each request that meets it (TryLock, Lock, a semaphore's
// TryAcquire of its only permit). The class the Join fix of session 13
// belongs to.
func TestOwnPendingCleanupIsNotInTheWay(t *testing.T) {
	t.Parallel()
	type leftBy func(ctx context.Context, t *testing.T, c *Client, d *cleanupFaultDialect, name string)
	released := func(ctx context.Context, t *testing.T, c *Client, d *cleanupFaultDialect, name string) {
		l, err := c.Lock(ctx, name, Exclusive)
		require.NoError(t, err)
		require.NoError(t, l.Release(ctx), "Release leaves a failed release to the janitor")
	}
	lostGrant := func(ctx context.Context, t *testing.T, c *Client, d *cleanupFaultDialect, name string) {
		d.mu.Lock()
		d.lostAcquires = 2
		d.mu.Unlock()
		_, err := c.TryLock(ctx, name, Exclusive)
		require.ErrorIs(t, err, dialect.ErrConnection)
	}
	semRelease := func(ctx context.Context, t *testing.T, c *Client, d *cleanupFaultDialect, name string) {
		p, err := c.Semaphore(name, 1).TryAcquire(ctx)
		require.NoError(t, err)
		require.NoError(t, p.Release(ctx), "Release leaves a failed release to the janitor")
	}
	type requester func(ctx context.Context, c *Client, name string) (func(context.Context) error, error)
	tryLock := func(ctx context.Context, c *Client, name string) (func(context.Context) error, error) {
		l, err := c.TryLock(ctx, name, Exclusive)
		if err != nil {
			return nil, err
		}
		return l.Release, nil
	}
	lock := func(ctx context.Context, c *Client, name string) (func(context.Context) error, error) {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		l, err := c.Lock(ctx, name, Exclusive)
		if err != nil {
			return nil, err
		}
		return l.Release, nil
	}
	semTry := func(ctx context.Context, c *Client, name string) (func(context.Context) error, error) {
		p, err := c.Semaphore(name, 1).TryAcquire(ctx)
		if err != nil {
			return nil, err
		}
		return p.Release, nil
	}
	cases := map[string]struct {
		left leftBy
		ask  requester
	}{
		"Released/TryLock":            {released, tryLock},
		"Released/Lock":               {released, lock},
		"LostGrant/TryLock":           {lostGrant, tryLock},
		"LostGrant/Lock":              {lostGrant, lock},
		"SemaphoreRelease/TryAcquire": {semRelease, semTry},
	}
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		for name, tc := range cases {
			t.Run(name, func(t *testing.T) {
				ctx := testCtx(t)
				d := &cleanupFaultDialect{Dialect: b.db.Dialect}
				c := b.client(t, Config{Dialect: d, ReapInterval: ReapDisabled, TTL: time.Minute})
				lockName := "own/" + name
				d.mu.Lock()
				d.fail = true
				d.mu.Unlock()
				tc.left(ctx, t, c, d, lockName)
				c.janitor.mu.Lock()
				pending := len(c.janitor.tasks) + len(c.janitor.running) // a pass may be trying them
				c.janitor.mu.Unlock()
				require.Positive(t, pending, "the cleanup was left to the janitor")

				release, err := tc.ask(context.WithValue(ctx, cleanupAllowed{}, true), c, lockName)
				require.NoError(t, err, "refused or held up by the client's own given-up hold")
				require.NoError(t, release(context.WithValue(ctx, cleanupAllowed{}, true)))
			})
		}
	})
}
