package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"
	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
	"github.com/sqldlm/sqldlm/dialect/postgres"
	"github.com/sqldlm/sqldlm/internal/testdb"
	"github.com/sqldlm/sqldlm/migrations"
)

// failover makes the epoch row look as if the server's timeline had
// changed since (what a promotion does): the next sqldlm statement moves
// to a new epoch.
func (f *fixture) failover() {
	f.t.Helper()
	_, err := f.db.ExecContext(f.ctx, `UPDATE sqldlm_epoch SET timeline = timeline + 1000`)
	require.NoError(f.t, err)
}

// An epoch change (the first statement after a timeline change) ends the
// leases of the older epoch: their renewals and grant requests are
// refused; it freezes grants for the longest TTL of the leases it knows,
// answering blocked by "(failover)" with the remaining freeze as the
// expiry; and the next token is 2^32 above the last one. Later statements
// of the new epoch change nothing more.
func TestEpochChange(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	old := f.lease("old", 20*time.Second)
	t1 := f.grant("e/held", old, dialect.Exclusive)

	f.failover()
	renewed, err := f.d.RenewLease(f.ctx, f.db.DB, old)
	require.NoError(t, err)
	require.False(t, renewed, "a lease of the older epoch was renewed")
	res := f.acquire(dialect.AcquireParams{Name: "e/other", LeaseID: old, Mode: dialect.Exclusive})
	require.Equal(t, dialect.LeaseLost, res.Status)

	fresh := f.lease("fresh", 3*time.Second)
	renewed, err = f.d.RenewLease(f.ctx, f.db.DB, fresh)
	require.NoError(t, err)
	require.True(t, renewed, "a lease of the current epoch was not renewed")
	res = f.acquire(dialect.AcquireParams{Name: "e/free", LeaseID: fresh, Mode: dialect.Exclusive, Enqueue: true})
	require.Equal(t, dialect.Blocked, res.Status, "granted during the freeze")
	require.Equal(t, "(failover)", res.Blocker.Owner)
	require.Equal(t, dialect.Exclusive, res.Blocker.Mode)
	// The freeze is the longest TTL the new primary knows (the old lease's
	// 20s), counted from the epoch change.
	require.Greater(t, res.Blocker.ExpiresIn, 15*time.Second)
	require.LessOrEqual(t, res.Blocker.ExpiresIn, 20*time.Second)
	require.Zero(t, f.count(f.db.DB, `SELECT count(*) FROM sqldlm_waiters`), "queued during the freeze")

	var epoch int64
	require.NoError(t, f.db.QueryRowContext(f.ctx, `SELECT epoch FROM sqldlm_epoch`).Scan(&epoch))
	require.Equal(t, int64(2), epoch)
	// End the freeze: grants go on, with tokens above every earlier one by
	// 2^32, and the epoch stays.
	_, err = f.db.ExecContext(f.ctx, `UPDATE sqldlm_epoch SET freeze_until = clock_timestamp()`)
	require.NoError(t, err)
	t2 := f.grant("e/free", fresh, dialect.Exclusive)
	require.Greater(t, t2, t1+1<<32-1)
	require.NoError(t, f.db.QueryRowContext(f.ctx, `SELECT epoch FROM sqldlm_epoch`).Scan(&epoch))
	require.Equal(t, int64(2), epoch)
	var n int
	require.NoError(t, f.db.QueryRowContext(f.ctx, `SELECT count(*) FROM sqldlm_leases WHERE id = $1 AND epoch = 2`, fresh).Scan(&n))
	require.Equal(t, 1, n, "a new lease is not of the current epoch")
}

// Concurrent statements at an epoch change move it once: one epoch more,
// one jump of the token sequence.
func TestEpochChangeConcurrent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	l := f.lease("x", 2*time.Second)
	t1 := f.grant("c/0", l, dialect.Exclusive)
	f.failover()
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			_, err := f.db.ExecContext(f.ctx, `SELECT * FROM sqldlm_current_epoch()`)
			errs <- err
		}()
	}
	for range 8 {
		require.NoError(t, <-errs)
	}
	var epoch, last int64
	require.NoError(t, f.db.QueryRowContext(f.ctx, `SELECT epoch FROM sqldlm_epoch`).Scan(&epoch))
	require.Equal(t, int64(2), epoch)
	require.NoError(t, f.db.QueryRowContext(f.ctx, `SELECT last_value FROM sqldlm_holders_token_seq`).Scan(&last))
	require.Equal(t, t1+1<<32, last)
}

// The SECURITY DEFINER function moves only an sqldlm_epoch table, and only
// when the timeline changed.
func TestEpochChangeRefusesOtherTables(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	_, err := f.db.ExecContext(f.ctx, `SELECT * FROM sqldlm_epoch_change('sqldlm_leases'::regclass)`)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "22023", pgErr.Code) // invalid_parameter_value
	var epoch int64
	require.NoError(t, f.db.QueryRowContext(f.ctx, `SELECT o_epoch FROM sqldlm_epoch_change('sqldlm_epoch'::regclass)`).Scan(&epoch))
	require.Equal(t, int64(1), epoch, "the epoch changed without a timeline change")
}

// A standby (or a server refusing writes) answers read_only_sql_transaction:
// a connection-class error, which the client retries (on the primary).
func TestClassifyReadOnlyAsConnection(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tx, err := f.db.BeginTx(f.ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = tx.ExecContext(f.ctx, `SET TRANSACTION READ ONLY`)
	require.NoError(t, err)
	_, err = tx.ExecContext(f.ctx, `UPDATE sqldlm_epoch SET epoch = epoch`)
	err = postgres.Dialect().ClassifyError(err)
	require.ErrorIs(t, err, dialect.ErrConnection)
	var de *dialect.Error
	require.True(t, errors.As(err, &de))
	require.Equal(t, "25006", de.Code)
}

// atVersion returns a schema of the test's own migrated to version v, and
// its migration provider.
func atVersion(t *testing.T, v int64) (context.Context, *testdb.DB, *goose.Provider) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	db := testdb.Open(t, testdb.Postgres)
	p, err := migrations.NewProvider(db.DB, postgres.Dialect())
	require.NoError(t, err)
	_, err = p.UpTo(ctx, v)
	require.NoError(t, err)
	return ctx, db, p
}

// Down from version 8 restores version 7 exactly.
func TestMigrationDownRestoresVersion7(t *testing.T) {
	t.Parallel()
	ctx, db, p := atVersion(t, 7)
	v7 := schemaCatalog(ctx, t, db.DB)
	_, err := p.UpTo(ctx, 8)
	require.NoError(t, err)
	v8 := schemaCatalog(ctx, t, db.DB)
	require.NotContains(t, v7, "relation sqldlm_epoch")
	require.Contains(t, v8, "relation sqldlm_epoch")
	require.Contains(t, v8, "function sqldlm_current_epoch()")
	require.Contains(t, v8, "function sqldlm_epoch_change(regclass)")
	for _, fn := range []string{"sqldlm_acquire(text,bigint,bigint,text,boolean,bigint,text,bigint)",
		"sqldlm_release(text,bigint,bigint)", "sqldlm_release_next(text,bigint,bigint)"} {
		require.Contains(t, v7, "function "+fn)
		require.NotEqual(t, v7["function "+fn], v8["function "+fn], fn)
	}

	_, err = p.DownTo(ctx, 7)
	require.NoError(t, err)
	require.Equal(t, v7, schemaCatalog(ctx, t, db.DB))
	var n int
	require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = 'sqldlm_leases' AND column_name = 'epoch'`).Scan(&n))
	require.Zero(t, n, "the epoch column outlived Down")
}

// A runtime role granted the tables (the README's grants) before version 8
// keeps working after it without a new GRANT: the migration gives
// sqldlm_epoch the grants sqldlm_leases has.
func TestMigrationToVersion8KeepsRuntimeGrants(t *testing.T) {
	t.Parallel()
	ctx, db, p := atVersion(t, 7)

	role := fmt.Sprintf("sqldlm_rt_%x", rand.Uint64())
	var schema string
	require.NoError(t, db.QueryRowContext(ctx, `SELECT quote_ident(current_schema())`).Scan(&schema))
	_, err := db.ExecContext(ctx, `CREATE ROLE `+role+` LOGIN`)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, s := range []string{`DROP OWNED BY ` + role, `DROP ROLE ` + role} {
			if _, err := db.ExecContext(ctx, s); err != nil {
				t.Errorf("cleanup %s: %v", s, err)
			}
		}
	})
	for _, s := range []string{`GRANT USAGE ON SCHEMA ` + schema + ` TO ` + role,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ` + schema + ` TO ` + role} {
		_, err = db.ExecContext(ctx, s)
		require.NoError(t, err, s)
	}
	_, err = p.UpTo(ctx, 8)
	require.NoError(t, err)

	u, err := url.Parse(db.DSN)
	require.NoError(t, err)
	u.User = url.User(role)
	rt := testdb.Reopen(t, testdb.Postgres, u.String())
	var epoch int64
	require.NoError(t, rt.QueryRowContext(ctx, `SELECT o_epoch FROM sqldlm_current_epoch()`).Scan(&epoch))
	require.Equal(t, int64(1), epoch)
	_, err = db.ExecContext(ctx, `UPDATE sqldlm_epoch SET timeline = timeline + 1000`)
	require.NoError(t, err)
	require.NoError(t, rt.QueryRowContext(ctx, `SELECT o_epoch FROM sqldlm_current_epoch()`).Scan(&epoch))
	require.Equal(t, int64(2), epoch)
}

// After a promotion, the new primary's copy of a lease can be expired
// while its holder still trusts it (renewals the old primary acknowledged
// were not shipped to an asynchronous standby). A Reap that is the first
// statement on the new primary must not shorten the freeze by deleting
// those leases first: it moves to the new epoch, whose freeze counts them,
// and only then deletes them. Grants wait for the freeze of the reaped
// lease's TTL, not of the leases left.
func TestReapAfterFailoverKeepsTheFreeze(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	old := f.lease("old", 2*time.Second)
	f.grant("r/held", old, dialect.Exclusive)
	f.expire(old) // on the new primary; its holder renewed on the old one
	f.failover()

	res, err := f.d.Reap(f.ctx, f.db.DB, 100, time.Hour)
	require.NoError(t, err)
	require.Equal(t, 1, res.Leases, "the reap deletes the lease that looks expired")
	fresh := f.lease("fresh", 500*time.Millisecond)
	got := f.acquire(dialect.AcquireParams{Name: "r/held", LeaseID: fresh, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Blocked, got.Status, "granted during the freeze, or after a freeze shortened by the reap")
	require.Equal(t, "(failover)", got.Blocker.Owner)
	require.Greater(t, got.Blocker.ExpiresIn, time.Second, "the freeze is not the reaped lease's TTL (2s)")
}

// The freeze after a promotion lasts the longest TTL the schema has
// recorded, not only the longest TTL of the leases the new primary still
// has: a client whose lease (created on the old primary just before the
// promotion, say after a restart) never reached the new primary still
// trusts its lock for its TTL. Here the client's earlier lease, with the
// same 4 s TTL, reached the standby and was deleted (the client stopped);
// the new primary knows only a 500 ms lease, created after the promotion.
// Without the record the freeze is nothing and that lease is granted at
// once.
func TestFreezeCoversTheRecordedTTL(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	earlier := f.lease("long", 4*time.Second)
	_, err := f.d.DeleteLease(f.ctx, f.db.DB, earlier)
	require.NoError(t, err)
	f.failover()

	fresh := f.lease("fresh", 500*time.Millisecond)
	got := f.acquire(dialect.AcquireParams{Name: "rec/free", LeaseID: fresh, Mode: dialect.Exclusive})
	require.Equal(t, dialect.Blocked, got.Status, "granted during a freeze shorter than a TTL in use")
	require.Equal(t, "(failover)", got.Blocker.Owner)
	require.Greater(t, got.Blocker.ExpiresIn, 3*time.Second, "the freeze is not the recorded TTL (4s)")
	require.LessOrEqual(t, got.Blocker.ExpiresIn, 4*time.Second)
}

// The record grows with the longest TTL of the leases created (by any
// client: a trigger keeps it), and only grows.
func TestRecordedTTLGrows(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	recorded := func() time.Duration {
		var us int64
		require.NoError(t, f.db.QueryRowContext(f.ctx, `SELECT max_ttl_us FROM sqldlm_epoch`).Scan(&us))
		return time.Duration(us) * time.Microsecond
	}
	f.lease("a", 3*time.Second)
	require.Equal(t, 3*time.Second, recorded())
	f.lease("b", time.Second)
	require.Equal(t, 3*time.Second, recorded())
	// A lease created by hand (as an older client, or another tool, would).
	_, err := f.db.ExecContext(f.ctx, `INSERT INTO sqldlm_leases (id, owner, ttl_us, created_at, renewed_at, expires_at)
		VALUES ($1, 'c', 7000000, clock_timestamp(), clock_timestamp(), clock_timestamp() + interval '7 seconds')`, rand.Int64())
	require.NoError(t, err)
	require.Equal(t, 7*time.Second, recorded())
}

// Up to version 12 records the longest TTL among the leases there are;
// Down restores version 11 exactly.
func TestMigrationDownRestoresVersion11(t *testing.T) {
	t.Parallel()
	ctx, db, p := atVersion(t, 11)
	v11 := schemaCatalog(ctx, t, db.DB)
	d := postgres.Dialect()
	for i, ttl := range []time.Duration{2 * time.Second, 9 * time.Second, time.Second} {
		require.NoError(t, d.CreateLease(ctx, db.DB, &dialect.CreateLeaseParams{ID: int64(i + 1), Owner: "m", TTL: ttl}))
	}
	_, err := p.UpTo(ctx, 12)
	require.NoError(t, err)
	v12 := schemaCatalog(ctx, t, db.DB)
	require.Contains(t, v12["relation sqldlm_leases"], "CREATE TRIGGER sqldlm_record_ttl AFTER INSERT ON sqldlm_leases")
	require.Contains(t, v12, "function sqldlm_record_ttl()")
	const change = "function sqldlm_epoch_change(regclass)"
	require.NotEqual(t, v11[change], v12[change])
	require.NotEqual(t, v11["relation sqldlm_epoch"], v12["relation sqldlm_epoch"])
	var us int64
	require.NoError(t, db.QueryRowContext(ctx, `SELECT max_ttl_us FROM sqldlm_epoch`).Scan(&us))
	require.Equal(t, (9 * time.Second).Microseconds(), us)

	_, err = p.DownTo(ctx, 11)
	require.NoError(t, err)
	require.Equal(t, v11, schemaCatalog(ctx, t, db.DB))
}
