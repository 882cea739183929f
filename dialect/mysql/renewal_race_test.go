package mysql_test

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sqldlm/sqldlm/dialect"
)

// TestRenewalCommittedDuringGrant (issue 15): a holder's renewal updates its
// lease row while the lease is live, and its COMMIT is slow (through Galera,
// a round trip to the other nodes). A request for the name whose phase 2
// reads the lease meanwhile sees the last committed version, expired; the
// renewal commits before the request locks the lease. The request must be
// blocked by the renewed lease, not granted beside its hold.
//
// The commit is made to land between sqldlm_acquire_decide's check of the
// holds (3) and the loop that locks the dead leases: in the test's database,
// sqldlm_acquire_check is wrapped so that its second call of the request
// (phase 2's) waits for a user lock the test holds. Version 6 granted the
// name (its loop chose the leases to lock by a read of its own, which showed
// the renewed lease live and so skipped it); version 8 is blocked.
func TestRenewalCommittedDuringGrant(t *testing.T) {
	e := newEnv(t)
	db := e.db.DB
	var b [8]byte
	_, _ = rand.Read(b[:])
	gate := "sqldlm_test_gate_" + hex.EncodeToString(b[:])

	// The wrapper: the live procedure under another name, and a procedure
	// of the old name that calls it, then waits at the gate on its second
	// call in the session.
	src, err := os.ReadFile("schema/sqldlm_acquire_check.sql")
	require.NoError(t, err)
	text := string(src)
	text = text[strings.Index(text, "CREATE PROCEDURE"):]
	text = strings.TrimSuffix(strings.TrimSpace(text), ";")
	orig := strings.Replace(text, "`sqldlm_acquire_check`", "`sqldlm_acquire_check_orig`", 1)
	require.NotEqual(t, text, orig)
	for _, stmt := range []string{
		orig,
		`DROP PROCEDURE sqldlm_acquire_check`,
		`CREATE PROCEDURE sqldlm_acquire_check(
		    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
		    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_upgrade BIGINT, IN p_now DATETIME(6), IN p_delay_us BIGINT,
		    OUT o_owner VARBINARY(255), OUT o_mode CHAR(1) CHARACTER SET ascii,
		    OUT o_expires_us BIGINT, OUT o_ahead INT)
		BEGIN
		    CALL sqldlm_acquire_check_orig(p_name, p_lease, p_request, p_mode, p_upgrade, p_now, p_delay_us,
		                                   o_owner, o_mode, o_expires_us, o_ahead);
		    SET @sqldlm_test_checks = COALESCE(@sqldlm_test_checks, 0) + 1;
		    IF @sqldlm_test_checks = 2 THEN
		        DO GET_LOCK('` + gate + `', 30);
		        DO RELEASE_LOCK('` + gate + `');
		    END IF;
		END`,
	} {
		_, err := db.ExecContext(e.ctx, stmt)
		require.NoError(t, err, stmt)
	}

	const ttl = time.Second
	h := e.lease(db, "h", ttl)
	c := e.lease(db, "c", time.Minute)
	e.grant(db, "n", h, dialect.Exclusive)

	// The renewal, its UPDATE done while the lease is live (as
	// sqldlm_renew_lease does it, but by a minute, so that the renewed lease
	// is still live when the request decides), its COMMIT held back.
	renewal, err := db.Conn(e.ctx)
	require.NoError(t, err)
	defer renewal.Close()
	_, err = renewal.ExecContext(e.ctx, `SET time_zone = '+00:00'`)
	require.NoError(t, err)
	tx, err := renewal.BeginTx(e.ctx, nil)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(e.ctx, `UPDATE sqldlm_leases
		SET renewed_at = SYSDATE(6), expires_at = SYSDATE(6) + INTERVAL 1 MINUTE
		WHERE id = ? AND broken_at IS NULL AND expires_at > SYSDATE(6)`, h)
	require.NoError(t, err)
	n, err := res.RowsAffected()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the renewal's UPDATE ran while the lease was live")
	// The committed version expires.
	e.expire(ttl)

	holder, err := db.Conn(e.ctx)
	require.NoError(t, err)
	defer holder.Close()
	var got int
	require.NoError(t, holder.QueryRowContext(e.ctx, `SELECT GET_LOCK(?, 0)`, gate).Scan(&got))
	require.Equal(t, 1, got)

	// The request, on a connection of its own (the wrapper counts its calls
	// in the session).
	pool := e.pool(nil)
	pool.SetMaxOpenConns(1)
	var id int64
	require.NoError(t, pool.QueryRowContext(e.ctx, `SELECT CONNECTION_ID()`).Scan(&id))
	type outcome struct {
		res *dialect.AcquireResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := d.Acquire(e.ctx, pool, &dialect.AcquireParams{Name: "n", LeaseID: c, RequestID: 1, Mode: dialect.Exclusive})
		done <- outcome{res, err}
	}()
	require.Eventually(t, func() bool {
		var state string
		err := db.QueryRowContext(e.ctx, `SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = ?`, id).Scan(&state)
		return err == nil && state == "User lock"
	}, 20*time.Second, 5*time.Millisecond, "the request waits at the gate, after phase 2's check")

	require.NoError(t, tx.Commit())
	require.NoError(t, holder.QueryRowContext(e.ctx, `SELECT RELEASE_LOCK(?)`, gate).Scan(&got))
	out := <-done
	require.NoError(t, out.err)
	require.Equal(t, dialect.Blocked, out.res.Status, "granted beside the renewed lease's hold (took over %+v)", out.res.TookOver)
	require.Equal(t, "h", out.res.Blocker.Owner)
	require.Equal(t, 1, e.count(db, `SELECT COUNT(*) FROM sqldlm_holders WHERE name = 'n'`), "the renewed lease's hold, alone")
	ok, err := d.RenewLease(e.ctx, db, h)
	require.NoError(t, err)
	require.True(t, ok, "the renewed lease lives on")
}
