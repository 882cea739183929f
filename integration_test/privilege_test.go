package integration_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm"
	"github.com/sqldlm/sqldlm/internal/dsn"
	"github.com/sqldlm/sqldlm/internal/testdb"
)

// Least privilege: the schema is migrated by an administrator, and the
// services run as a role or user that may only read and write sqldlm's
// rows (and, on MariaDB, call its procedures). Every lock operation works
// through such a role; migrating does not.

// The statements the README gives, with {schema}/{db} and {role}/{user}
// replaced by quoted identifiers. The test runs exactly these.
var (
	// PostgreSQL, after `sqldlm migrate up` as the schema's owner.
	pgRuntimeGrants = []string{
		`GRANT USAGE ON SCHEMA {schema} TO {role}`,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}`,
		// EXECUTE on sqldlm's functions is granted to PUBLIC by default;
		// all are SECURITY INVOKER but sqldlm_epoch_change (see below);
		// identity columns need no sequence grant.
	}
	// MariaDB/MySQL, after `sqldlm migrate up` as a user with the
	// migration privileges.
	mysqlRuntimeGrants = []string{
		`GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE ON {db}.* TO {user}`,
	}
	// PostgreSQL: the migrating role needs to create in the schema (or own
	// it); it then owns sqldlm's objects.
	pgMigrationGrants = []string{
		`GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}`,
	}
	mysqlMigrationGrants = []string{
		`GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE, CREATE, DROP, ALTER, INDEX, CREATE VIEW, SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE ON {db}.* TO {user}`,
	}
)

func randomName(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func execAll(t *testing.T, db *sql.DB, stmts []string, repl *strings.Replacer) {
	t.Helper()
	for _, s := range stmts {
		_, err := db.ExecContext(context.Background(), repl.Replace(s))
		require.NoError(t, err, repl.Replace(s))
	}
}

// withUser returns rawDSN with its user (and password) replaced.
func withUser(t *testing.T, rawDSN, user, password string) string {
	t.Helper()
	u, err := url.Parse(rawDSN)
	require.NoError(t, err)
	if password == "" {
		u.User = url.User(user)
	} else {
		u.User = url.UserPassword(user, password)
	}
	return u.String()
}

func TestLeastPrivilegePostgres(t *testing.T) {
	t.Parallel()
	admin := testdb.OpenMigrated(t, testdb.Postgres)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var schema string
	require.NoError(t, admin.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema))
	role := randomName("sqldlm_rt_")
	qRole, err := admin.Dialect.QuoteIdentifier(role)
	require.NoError(t, err)
	qSchema, err := admin.Dialect.QuoteIdentifier(schema)
	require.NoError(t, err)
	_, err = admin.ExecContext(ctx, `CREATE ROLE `+qRole+` LOGIN`)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, s := range []string{`DROP OWNED BY ` + qRole, `DROP ROLE ` + qRole} {
			if _, err := admin.ExecContext(ctx, s); err != nil {
				t.Errorf("cleanup %s: %v", s, err)
			}
		}
	})
	repl := strings.NewReplacer("{schema}", qSchema, "{role}", qRole)

	// The PostgreSQL defaults this relies on: EXECUTE on every sqldlm
	// function for PUBLIC, and one SECURITY DEFINER function only,
	// sqldlm_epoch_change (raising the token sequence at a failover needs
	// UPDATE on it, which the runtime role has not), with a search_path
	// that the caller cannot add to.
	var definers string
	var notPublic int
	require.NoError(t, admin.QueryRowContext(ctx, `SELECT
		coalesce(string_agg(p.proname::text || ' ' || array_to_string(p.proconfig, ','), '; ') FILTER (WHERE prosecdef), ''),
		count(*) FILTER (WHERE NOT has_function_privilege('public', p.oid, 'EXECUTE'))
		FROM pg_proc p WHERE pronamespace = current_schema()::regnamespace`).Scan(&definers, &notPublic))
	require.Equal(t, "sqldlm_epoch_change search_path=pg_catalog, pg_temp", definers, "SECURITY DEFINER functions")
	require.Zero(t, notPublic, "functions PUBLIC may not execute")

	roleDSN := withUser(t, admin.DSN, role, "")
	// Before the grants the role cannot even see the schema's tables.
	pool := testdb.Reopen(t, testdb.Postgres, roleDSN)
	_, err = sqldlm.New(pool.DB, sqldlm.Config{ConnectTimeout: 10 * time.Second})
	require.Error(t, err, "New without grants")

	execAll(t, admin.DB, pgRuntimeGrants, repl)
	exerciseEveryOperation(t, testdb.Postgres, roleDSN)
	// The role's first statement after a failover moves the epoch, which
	// raises the token sequence: through sqldlm_epoch_change, as the owner.
	_, err = admin.ExecContext(ctx, `UPDATE sqldlm_epoch SET timeline = timeline + 1000`)
	require.NoError(t, err)
	var epoch int64
	require.NoError(t, pool.QueryRowContext(ctx, `SELECT o_epoch FROM sqldlm_current_epoch()`).Scan(&epoch))
	require.Equal(t, int64(2), epoch)

	// The role cannot migrate: not a new schema (no CREATE on it)...
	fresh := testdb.Open(t, testdb.Postgres)
	var freshSchema string
	require.NoError(t, fresh.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&freshSchema))
	qFresh, _ := admin.Dialect.QuoteIdentifier(freshSchema)
	_, err = admin.ExecContext(ctx, `GRANT USAGE ON SCHEMA `+qFresh+` TO `+qRole)
	require.NoError(t, err)
	rolePool := testdb.Reopen(t, testdb.Postgres, withUser(t, fresh.DSN, role, ""))
	err = sqldlm.Migrate(ctx, rolePool.DB, nil)
	require.ErrorContains(t, err, "sqldlm: migrate")
	require.ErrorContains(t, err, "permission denied for schema "+freshSchema)
	// With the migration grant it can.
	execAll(t, admin.DB, pgMigrationGrants, strings.NewReplacer("{schema}", qFresh, "{role}", qRole))
	require.NoError(t, sqldlm.Migrate(ctx, rolePool.DB, nil))
	c, err := sqldlm.New(rolePool.DB, sqldlm.Config{})
	require.NoError(t, err)
	require.NoError(t, c.Close())
	// ...nor change the migrated one.
	for _, ddl := range []string{`DROP TABLE sqldlm_locks`, `ALTER TABLE sqldlm_leases ADD COLUMN x int`, `CREATE TABLE x (y int)`, `TRUNCATE sqldlm_audit`} {
		_, err := pool.ExecContext(ctx, ddl)
		require.Error(t, err, ddl)
		require.Contains(t, err.Error(), "SQLSTATE 42501", ddl) // insufficient_privilege
	}
}

func TestLeastPrivilegeMySQL(t *testing.T) {
	t.Parallel()
	admin := testdb.OpenMigrated(t, testdb.MySQL)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var database string
	require.NoError(t, admin.QueryRowContext(ctx, `SELECT DATABASE()`).Scan(&database))
	user, password := randomName("sqldlm_rt_"), randomName("pw")
	qDB, err := admin.Dialect.QuoteIdentifier(database)
	require.NoError(t, err)
	qUser := "'" + user + "'@'%'" // user is [a-z0-9_]: no quoting needed inside '...'
	_, err = admin.ExecContext(ctx, `CREATE USER `+qUser+` IDENTIFIED BY '`+password+`'`)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := admin.ExecContext(ctx, `DROP USER `+qUser); err != nil {
			t.Errorf("cleanup: drop user %s: %v", user, err)
		}
	})
	repl := strings.NewReplacer("{db}", qDB, "{user}", qUser)

	// The procedures run with their definer's rights (MySQL's default, SQL
	// SECURITY DEFINER): the caller needs only EXECUTE on them.
	var invoker int
	require.NoError(t, admin.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.routines
		WHERE routine_schema = DATABASE() AND security_type <> 'DEFINER'`).Scan(&invoker))
	require.Zero(t, invoker)

	roleDSN := withUser(t, admin.DSN, user, password)
	_, _, err = dsn.Open(ctx, roleDSN)
	require.ErrorContains(t, err, "Access denied for user", "no grants: not even the database")

	execAll(t, admin.DB, mysqlRuntimeGrants, repl)
	exerciseEveryOperation(t, testdb.MySQL, roleDSN)

	pool := testdb.Reopen(t, testdb.MySQL, roleDSN)
	for _, ddl := range []string{`DROP TABLE sqldlm_locks`, `ALTER TABLE sqldlm_leases ADD COLUMN x int`, `CREATE TABLE x (y int)`, `DROP PROCEDURE sqldlm_acquire`} {
		_, err := pool.ExecContext(ctx, ddl)
		require.Error(t, err, ddl)
		require.Regexp(t, `Error (1142|1370)`, err.Error(), ddl) // ER_TABLEACCESS_DENIED_ERROR, ER_PROCACCESS_DENIED_ERROR
	}

	// The user cannot migrate a new database it was given rights to use.
	fresh := testdb.Open(t, testdb.MySQL)
	var freshDB string
	require.NoError(t, fresh.QueryRowContext(ctx, `SELECT DATABASE()`).Scan(&freshDB))
	qFresh, _ := admin.Dialect.QuoteIdentifier(freshDB)
	execAll(t, admin.DB, mysqlRuntimeGrants, strings.NewReplacer("{db}", qFresh, "{user}", qUser))
	rolePool := testdb.Reopen(t, testdb.MySQL, withUser(t, fresh.DSN, user, password))
	err = sqldlm.Migrate(ctx, rolePool.DB, nil)
	require.ErrorContains(t, err, "sqldlm: migrate")
	require.ErrorContains(t, err, "CREATE command denied to user '"+user+"'")

	// With the migration grants it can (database privileges reach new
	// sessions, hence a new pool).
	execAll(t, admin.DB, mysqlMigrationGrants, strings.NewReplacer("{db}", qFresh, "{user}", qUser))
	rolePool = testdb.Reopen(t, testdb.MySQL, withUser(t, fresh.DSN, user, password))
	require.NoError(t, sqldlm.Migrate(ctx, rolePool.DB, nil))
	c, err := sqldlm.New(rolePool.DB, sqldlm.Config{})
	require.NoError(t, err)
	require.NoError(t, c.Close())
}

// exerciseEveryOperation runs every lock operation through Clients opened
// with rawDSN: they must all succeed.
func exerciseEveryOperation(t *testing.T, kind, rawDSN string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := func(cfg sqldlm.Config) (*sqldlm.Client, *sql.DB) {
		pool := testdb.Reopen(t, kind, rawDSN)
		cfg.TTL = 2 * time.Second
		c, err := sqldlm.New(pool.DB, cfg)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c, pool.DB
	}
	a, db := open(sqldlm.Config{Owner: "rt-a", Audit: true, ReapInterval: 100 * time.Millisecond})
	b, _ := open(sqldlm.Config{Owner: "rt-b"})
	d := testdb.Dialects()[kind] // the same stateless value the clients detected

	// Exclusive: TryLock, conflict, a blocked Lock that is handed the lock.
	l, err := a.TryLock(ctx, "priv/x", sqldlm.Exclusive, sqldlm.WithPayload("step 1"))
	require.NoError(t, err)
	_, err = b.TryLock(ctx, "priv/x", sqldlm.Shared)
	require.ErrorIs(t, err, sqldlm.ErrLocked)
	got := make(chan error, 1)
	go func() {
		lb, err := b.Lock(ctx, "priv/x", sqldlm.Exclusive)
		if err == nil {
			err = lb.Release(ctx)
		}
		got <- err
	}()
	require.Eventually(t, func() bool {
		locks, err := a.Locks(ctx, sqldlm.Filter{Prefix: "priv/x"})
		return err == nil && len(locks) == 1 && len(locks[0].Waiters) == 1
	}, 20*time.Second, 10*time.Millisecond, "b queues")
	require.NoError(t, l.SetPayload(ctx, "step 2"))
	tx, err := db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, l.Fence(ctx, tx))
	require.NoError(t, tx.Commit())
	require.NoError(t, l.Release(ctx))
	require.NoError(t, <-got)

	// Shared, upgrade, downgrade.
	s1, err := a.Lock(ctx, "priv/s", sqldlm.Shared)
	require.NoError(t, err)
	s2, err := b.Lock(ctx, "priv/s", sqldlm.Shared)
	require.NoError(t, err)
	require.NoError(t, s2.Release(ctx))
	require.NoError(t, s1.Upgrade(ctx))
	require.Equal(t, sqldlm.Exclusive, s1.Mode())
	require.NoError(t, s1.Downgrade(ctx))
	require.NoError(t, s1.Release(ctx))

	// In the caller's transaction.
	tx, err = db.BeginTx(ctx, nil)
	require.NoError(t, err)
	lt, err := a.TryLockTx(ctx, tx, "priv/tx", sqldlm.Exclusive)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	tx, err = db.BeginTx(ctx, nil)
	require.NoError(t, err)
	require.NoError(t, lt.ReleaseTx(ctx, tx))
	require.NoError(t, tx.Commit())
	require.NoError(t, lt.Release(ctx))

	// Introspection, an operator's break, the reaper, the audit log.
	lb, err := b.Lock(ctx, "priv/b", sqldlm.Exclusive)
	require.NoError(t, err)
	leases, err := a.Leases(ctx)
	require.NoError(t, err)
	require.Len(t, leases, 2)
	broken, err := d.Break(ctx, db, "priv/b", "rt-b")
	require.NoError(t, err)
	require.Len(t, broken, 1)
	select {
	case <-lb.Done():
	case <-ctx.Done():
		t.Fatal("the broken holder did not learn it lost the lock")
	}
	require.ErrorIs(t, lb.Err(), sqldlm.ErrLost)
	require.Eventually(t, func() bool { // a's reaper deletes the broken lease
		leases, err := a.Leases(ctx)
		return err == nil && len(leases) == 1
	}, 20*time.Second, 20*time.Millisecond)
	res, err := d.Reap(ctx, db, 100, 0)
	require.NoError(t, err)
	require.Zero(t, res.Leases)
	entries, err := a.AuditLog(ctx, sqldlm.AuditFilter{})
	require.NoError(t, err)
	events := map[string]int{}
	for _, e := range entries {
		events[e.Event]++
	}
	for _, e := range []string{"grant", "release", "upgrade", "downgrade", "break"} {
		require.Positive(t, events[e], "audit event %s in %v", e, events)
	}

	// Group membership.
	m, err := a.Join(ctx, "priv/group", "a", sqldlm.WithMeta("m1"))
	require.NoError(t, err)
	require.NoError(t, m.SetMeta(ctx, "m2"))
	view, err := b.Members(ctx, "priv/group")
	require.NoError(t, err)
	require.Len(t, view.Members, 1)
	require.Equal(t, "m2", view.Members[0].Meta)
	require.NoError(t, m.Leave(ctx))
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
}
