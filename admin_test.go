package sqldlm

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/mysql"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// admin returns an Admin on a pool of its own (as the CLI would have).
func (b *lockBundle) admin(t *testing.T) *Admin {
	t.Helper()
	a, err := NewAdmin(testdb.Reopen(t, b.kind, b.db.DSN).DB, AdminConfig{})
	require.NoError(t, err)
	return a
}

// An Admin, which holds no lease, sees what clients hold and wait for,
// breaks a holder's lease, and reads and sets the audit log, on every
// dialect.
func TestAdmin(t *testing.T) {
	t.Parallel()
	forEachKind(t, func(t *testing.T, b *lockBundle) {
		ctx := testCtx(t)
		admin := b.admin(t)

		settings, err := admin.AuditSettings(ctx)
		require.NoError(t, err)
		require.Equal(t, AuditSettings{Enabled: false, Retention: AuditRetentionDefault}, settings, "as the migrations create it")
		require.NoError(t, admin.SetAudit(ctx, AuditSettings{Enabled: true, Retention: time.Hour}))
		settings, err = admin.AuditSettings(ctx)
		require.NoError(t, err)
		require.Equal(t, AuditSettings{Enabled: true, Retention: time.Hour}, settings)

		holder := b.client(t, Config{Owner: "engine-1"})
		other := b.client(t, Config{Owner: "engine-2"})
		held, err := holder.Lock(ctx, "stack/7", Exclusive, WithPayload("resize"))
		require.NoError(t, err)
		shared, err := holder.Lock(ctx, "stack/8", Shared)
		require.NoError(t, err)
		waitCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		waited := make(chan error, 1)
		go func() {
			l, err := other.Lock(waitCtx, "stack/7", Shared)
			if err == nil {
				err = l.Release(ctx)
			}
			waited <- err
		}()

		var locks []LockInfo
		require.Eventually(t, func() bool {
			locks, err = admin.Locks(ctx, Filter{Prefix: "stack/"})
			return err == nil && len(locks) == 2 && len(locks[0].Waiters) == 1
		}, 10*time.Second, 10*time.Millisecond)
		require.Equal(t, "stack/7", locks[0].Name)
		require.Equal(t, Exclusive, locks[0].Mode)
		require.Equal(t, held.Token(), locks[0].Token)
		require.Len(t, locks[0].Holders, 1)
		h := locks[0].Holders[0]
		require.Equal(t, "engine-1", h.Owner)
		require.Equal(t, Exclusive, h.Mode)
		require.Equal(t, "resize", h.Payload)
		require.True(t, h.Live)
		require.Equal(t, "engine-2", locks[0].Waiters[0].Owner)
		require.Equal(t, Shared, locks[0].Waiters[0].Mode)
		require.Equal(t, "stack/8", locks[1].Name)
		require.Equal(t, Shared, locks[1].Mode)
		fromClient, err := holder.Locks(ctx, Filter{Prefix: "stack/"})
		require.NoError(t, err)
		require.Equal(t, len(locks), len(fromClient), "the client's Locks are its Admin's")
		only, err := admin.Locks(ctx, Filter{Owner: "engine-2"})
		require.NoError(t, err)
		require.Len(t, only, 1)

		leases, err := admin.Leases(ctx)
		require.NoError(t, err)
		require.Len(t, leases, 2, "the Admin has no lease of its own")
		byOwner := map[string]LeaseInfo{}
		for _, l := range leases {
			byOwner[l.Owner] = l
		}
		require.Equal(t, 2, byOwner["engine-1"].Holds)
		require.Equal(t, 1, byOwner["engine-2"].Waits)

		// Breaking a name nobody holds breaks nothing; bad names are refused.
		none, err := admin.Break(ctx, "stack/9", "")
		require.NoError(t, err)
		require.Empty(t, none)
		_, err = admin.Break(ctx, "", "")
		require.ErrorIs(t, err, ErrInvalidName)
		none, err = admin.Break(ctx, "stack/7", "engine-2")
		require.NoError(t, err)
		require.Empty(t, none, "engine-2 only waits")

		broken, err := admin.Break(ctx, "stack/7", "engine-1")
		require.NoError(t, err)
		require.Len(t, broken, 1)
		require.Equal(t, "engine-1", broken[0].Owner)
		require.Equal(t, byOwner["engine-1"].ID, broken[0].ID)
		for _, l := range []*Lock{held, shared} { // a broken lease loses every lock it holds
			select {
			case <-l.Done():
			case <-ctx.Done():
				t.Fatalf("the broken lease's lock of %s was not lost", l.Name())
			}
			require.ErrorIs(t, l.Err(), ErrLost)
		}
		require.NoError(t, <-waited, "the waiter took the name over")

		entries, err := admin.AuditLog(ctx, AuditFilter{Name: "stack/7"})
		require.NoError(t, err)
		var events []string
		for _, e := range entries {
			events = append(events, e.Event)
		}
		// The broken hold is deleted by the waiter's grant (takeover), the
		// reaper (expire) or its own client dropping the lost lease
		// (release), whichever comes first.
		require.Len(t, events, 5, "%v", events)
		require.Equal(t, []string{"grant", "break"}, events[:2])
		require.Contains(t, []string{"takeover", "expire", "release"}, events[2])
		require.Equal(t, []string{"grant", "release"}, events[3:])
		for i, owner := range []string{"engine-1", "engine-1", "engine-1", "engine-2", "engine-2"} {
			require.Equal(t, owner, entries[i].Owner, "row %d", i)
		}
		require.Equal(t, Exclusive, entries[0].Mode)
		require.Equal(t, held.Token(), entries[0].Token)
		require.Equal(t, Shared, entries[3].Mode)
		fromClientLog, err := other.AuditLog(ctx, AuditFilter{Name: "stack/7"})
		require.NoError(t, err)
		require.Equal(t, entries, fromClientLog, "the client's AuditLog is its Admin's")
		last, err := admin.AuditLog(ctx, AuditFilter{Name: "stack/7", Limit: 1})
		require.NoError(t, err)
		require.Equal(t, entries[len(entries)-1:], last)

		require.ErrorContains(t, admin.SetAudit(ctx, AuditSettings{Enabled: false}), "retention 0s: use at least 1s")
		require.NoError(t, admin.SetAudit(ctx, AuditSettings{Enabled: false, Retention: time.Hour}))
		settings, err = admin.AuditSettings(ctx)
		require.NoError(t, err)
		require.False(t, settings.Enabled)
	})
}

// NewAdmin refuses what it cannot work with, and an Admin on a database
// that was never migrated says so.
func TestAdminErrors(t *testing.T) {
	t.Parallel()
	_, err := NewAdmin(nil, AdminConfig{})
	require.ErrorContains(t, err, "NewAdmin needs a *sql.DB")
	for _, kind := range testdb.Kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			db := testdb.Open(t, kind)
			if kind != testdb.MySQL {
				_, err := NewAdmin(db.DB, AdminConfig{Dialect: mysql.Dialect()})
				require.ErrorContains(t, err, "Config.Dialect is mysql but the database's driver")
			}
			admin, err := NewAdmin(db.DB, AdminConfig{})
			require.NoError(t, err, "NewAdmin does not touch the database")
			_, err = admin.Locks(ctx, Filter{})
			require.ErrorIs(t, err, dialect.ErrUndefinedTable)
			require.ErrorContains(t, err, "sqldlm: list locks: ")
			_, err = admin.Leases(ctx)
			require.ErrorIs(t, err, dialect.ErrUndefinedTable)
			_, err = admin.AuditSettings(ctx)
			require.ErrorIs(t, err, dialect.ErrUndefinedTable)
		})
	}
}
