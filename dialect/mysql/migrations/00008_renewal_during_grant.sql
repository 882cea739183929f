-- sqldlm schema version 8 for MySQL 8 and MariaDB 10.6+: a renewal that
-- commits while a grant decides no longer lets the grant through beside the
-- renewed hold (issue 15).
--
-- sqldlm_acquire_decide, phase 2: (3) reads the conflicting holds and
-- their leases without a lock, by v_now; a lease that (3) found dead for the
-- lock delay was then locked and taken over, but the loop that locks them
-- chose its leases with a read of its own, again by the latest committed
-- versions and v_now, and a lease that this second read showed live was
-- skipped, not counted as blocking. A renewal whose UPDATE ran while the
-- lease was live (before v_now) and whose COMMIT came between the two reads
-- made (3) see the lease dead and the loop see it live: the grant skipped
-- it, so the name was granted exclusively to two leases at once, and the
-- old holder's renewals went on succeeding. The window is a renewal's
-- commit latency: on standalone MariaDB a few microseconds, through Galera
-- (certification, a round trip to the other nodes) up to tens of
-- milliseconds under load, where the conformance case
-- RenewalAndTakeoverSerialize saw it (TestGaleraRenewTakeoverRaceLong hunts
-- it; TestRenewalCommittedDuringGrant shows it on any MariaDB).
--
-- Now the loop takes every conflicting hold's lease (excluding the upgraded
-- hold, as before), checks by the latest committed version (no lock) that
-- it is dead by v_now as (3) does, and blocks if not; then locks it and
-- re-checks as before. The take-over loop after the grant takes over every
-- conflicting hold but the new one (all of them of leases the first loop
-- locked and found dead), so both loops see the same leases. Nothing else
-- changes: a request that (3) finds unblocked and whose conflicting leases
-- stay dead takes the same locks as in version 7.
--
-- Down restores version 7's sqldlm_acquire_decide (unchanged since 00005).

-- +goose Up
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DROP PROCEDURE IF EXISTS sqldlm_acquire_decide;

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_acquire_decide(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_upgrade BIGINT,
    IN p_payload VARBINARY(4096), IN p_delay_us BIGINT, IN p_in_tx BOOLEAN,
    OUT o_status INT, OUT o_token BIGINT, OUT o_owner VARBINARY(255), OUT o_mode CHAR(1) CHARACTER SET ascii,
    OUT o_expires_us BIGINT, OUT o_ahead INT, OUT o_taken INT, OUT o_granted BOOLEAN)
BEGIN
    DECLARE v_now DATETIME(6);
    DECLARE v_n INT;
    DECLARE v_locked INT;
    DECLARE v_ok BOOLEAN;
    DECLARE v_dead BIGINT DEFAULT NULL;
    DECLARE v_last BIGINT DEFAULT NULL;
    DECLARE v_exists INT;
    DECLARE v_top BIGINT DEFAULT NULL;
    DECLARE v_seen BIGINT DEFAULT NULL;
    DECLARE v_self VARBINARY(255) DEFAULT NULL;
    DECLARE v_payload VARBINARY(1024) DEFAULT NULL;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE v_taken INT;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    SET o_status = 0, o_token = NULL, o_owner = NULL, o_mode = NULL, o_expires_us = NULL, o_ahead = 0,
        o_taken = 0, o_granted = FALSE;
    decide: BEGIN
        -- Phase 1: consistent reads only. A withdrawn request first.
        SELECT COUNT(*) INTO v_n FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request;
        IF v_n > 0 THEN
            SET o_status = 6;
            LEAVE decide;
        END IF;
        SET v_now = SYSDATE(6);
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now;
        IF v_n = 0 THEN
            IF p_in_tx THEN
                -- An old snapshot may show an expiry that renewals have
                -- since moved: trusted only if it has the pending row.
                SELECT COUNT(*) INTO v_n FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
                IF v_n = 0 THEN
                    SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644,
                        MESSAGE_TEXT = 'sqldlm isolation: the transaction''s snapshot predates this request; run the transaction at READ COMMITTED';
                END IF;
            END IF;
            SET o_status = 3;
            LEAVE decide;
        END IF;
        -- A repeated request returns the hold it already obtained.
        SELECT MAX(token) INTO o_token FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
        IF o_token IS NOT NULL THEN
            IF p_in_tx THEN
                DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
            END IF;
            SET o_status = 1;
            LEAVE decide;
        END IF;
        IF p_upgrade <> 0 THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders
             WHERE token = p_upgrade AND lease_id = p_lease AND name = p_name;
            IF v_n = 0 THEN
                SET o_status = 4;
                LEAVE decide;
            END IF;
            SELECT COUNT(*) INTO v_n
              FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
             WHERE w.name = p_name AND w.upgrade_token IS NOT NULL AND w.upgrade_token <> p_upgrade
               AND l.broken_at IS NULL AND l.expires_at > v_now;
            IF v_n > 0 THEN
                SET o_status = 5;
                LEAVE decide;
            END IF;
        END IF;
        CALL sqldlm_acquire_check(p_name, p_lease, p_request, p_mode, p_upgrade, v_now, p_delay_us,
                                  o_owner, o_mode, o_expires_us, o_ahead);
        IF o_mode IS NOT NULL OR o_ahead > 0 THEN
            SET o_status = 2;
            LEAVE decide;
        END IF;

        -- Phase 2. (1) The name's row, locked (a locking read sees the
        -- latest committed version).
        SELECT COUNT(*), MAX(token) INTO v_exists, v_top FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
        IF p_in_tx AND v_exists > 0 THEN
            SELECT MAX(token) INTO v_seen FROM sqldlm_locks WHERE name = p_name;
            IF v_seen IS NULL OR v_seen <> v_top THEN
                SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644,
                    MESSAGE_TEXT = 'sqldlm isolation: the transaction''s snapshot predates the last grant of this name; run it at READ COMMITTED';
            END IF;
        END IF;
        -- (2) The requesting lease, shared (not in the caller's transaction,
        -- where the lock would last until it ends), then the clock.
        IF NOT p_in_tx THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = p_lease LOCK IN SHARE MODE;
        END IF;
        SET v_now = SYSDATE(6);
        SELECT COUNT(*), MAX(owner) INTO v_n, v_self FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now;
        IF v_n = 0 THEN
            IF p_in_tx THEN
                SELECT COUNT(*) INTO v_n FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
                IF v_n = 0 THEN
                    SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644,
                        MESSAGE_TEXT = 'sqldlm isolation: the transaction''s snapshot predates this request; run the transaction at READ COMMITTED';
                END IF;
            END IF;
            SET o_status = 3;
            LEAVE decide;
        END IF;
        -- (1') The name's row created if missing: ON DUPLICATE KEY takes the
        -- row's exclusive lock at once (INSERT IGNORE would take a shared
        -- one, and two sessions upgrading theirs deadlock). If another
        -- session inserted it meanwhile, nothing is changed, and the snapshot
        -- is checked against its token.
        IF v_exists = 0 THEN
            INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, SYSDATE(6))
                ON DUPLICATE KEY UPDATE token = token;
            IF p_in_tx THEN
                SELECT MAX(token) INTO v_top FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
                SELECT MAX(token) INTO v_seen FROM sqldlm_locks WHERE name = p_name;
                IF v_seen IS NULL OR v_seen <> v_top THEN
                    SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644,
                        MESSAGE_TEXT = 'sqldlm isolation: the transaction''s snapshot predates the last grant of this name; run it at READ COMMITTED';
                END IF;
            END IF;
        END IF;
        -- (1'') Withdrawn? sqldlm_abandon locks the name's row (creating it
        -- if missing) before it records a withdrawal, and that row is locked
        -- now: a withdrawal that committed before is seen here, and none can
        -- commit until this transaction ends. Checked before the repeated
        -- request below: a withdrawn upgrade's kept hold is not returned. In
        -- the caller's transaction a locking read (the latest version,
        -- whatever the snapshot).
        IF p_in_tx THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_withdrawn
             WHERE lease_id = p_lease AND request_id = p_request LOCK IN SHARE MODE;
        ELSE
            SELECT COUNT(*) INTO v_n FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request;
        END IF;
        IF v_n > 0 THEN
            SET o_status = 6;
            LEAVE decide;
        END IF;
        -- A concurrent attempt of this same request may have committed.
        SELECT MAX(token) INTO o_token FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
        IF o_token IS NOT NULL THEN
            IF p_in_tx THEN
                DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
            END IF;
            SET o_status = 1;
            LEAVE decide;
        END IF;
        IF p_upgrade <> 0 THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders
             WHERE token = p_upgrade AND lease_id = p_lease AND name = p_name;
            IF v_n = 0 THEN
                SET o_status = 4;
                LEAVE decide;
            END IF;
            SELECT COUNT(*), MAX(payload) INTO v_n, v_payload
              FROM sqldlm_holders WHERE token = p_upgrade FOR UPDATE SKIP LOCKED;
            IF v_n = 0 THEN
                -- The shared hold is pinned by a fenced transaction (of the
                -- holder's own), or briefly locked by a Downgrade or
                -- SetPayload: the upgrade waits for it to end.
                SELECT owner, TIMESTAMPDIFF(MICROSECOND, v_now, expires_at), 'S'
                  INTO o_owner, o_expires_us, o_mode
                  FROM sqldlm_leases WHERE id = p_lease;
                SET o_status = 2;
                LEAVE decide;
            END IF;
        END IF;
        -- (3) The holds again, by the clock read after the locks.
        CALL sqldlm_acquire_check(p_name, p_lease, p_request, p_mode, p_upgrade, v_now, p_delay_us,
                                  o_owner, o_mode, o_expires_us, o_ahead);
        IF o_mode IS NOT NULL OR o_ahead > 0 THEN
            SET o_status = 2;
            LEAVE decide;
        END IF;
        -- Lock the lease of every conflicting hold, one at a time in id
        -- order, each of which must be dead: by the latest committed version
        -- and v_now, as in (3) (no lock); then its row (without waiting), a
        -- re-check with a locking read and SYSDATE(6) that it has been dead
        -- for the lock delay (a live lease is dead since later than the
        -- cutoff, so one condition covers both), its holds of the name
        -- (without waiting). Nothing is changed until all of them are
        -- locked. Every conflicting hold, not only those of leases that this
        -- loop's read shows dead: a renewal that updated the row before v_now
        -- and committed after (3) read it is seen here, and blocks.
        takeover: LOOP
            SELECT MIN(lease_id) INTO v_dead
              FROM sqldlm_holders
             WHERE name = p_name AND token <> p_upgrade AND (p_mode = 'X' OR mode = 'X')
               AND (v_last IS NULL OR lease_id > v_last);
            IF v_dead IS NULL THEN
                LEAVE takeover;
            END IF;
            SET v_last = v_dead;
            SET v_ok = FALSE, v_locked = 0;
            SELECT COUNT(*) INTO v_n FROM sqldlm_leases
             WHERE id = v_dead
               AND LEAST(expires_at, COALESCE(broken_at, expires_at)) > v_now - INTERVAL p_delay_us MICROSECOND;
            IF v_n = 0 THEN
                SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = v_dead;
                IF v_n > 0 THEN
                    SELECT COUNT(*) INTO v_locked FROM sqldlm_leases WHERE id = v_dead FOR UPDATE SKIP LOCKED;
                END IF;
                IF v_locked = v_n THEN
                    IF v_n > 0 THEN
                        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
                         WHERE id = v_dead
                           AND LEAST(expires_at, COALESCE(broken_at, expires_at)) > SYSDATE(6) - INTERVAL p_delay_us MICROSECOND
                           FOR UPDATE;
                    END IF;
                    IF v_n = 0 THEN
                        CALL sqldlm_lock_holds(p_name, v_dead, v_ok);
                    END IF;
                END IF;
            END IF;
            IF NOT v_ok THEN
                -- Renewed after all, dead for less than the lock delay, or
                -- locked by another transaction (a fence, a renewal, a reap):
                -- blocked for now.
                SET v_now = SYSDATE(6);
                SELECT l.owner, h.mode,
                       IF(l.broken_at IS NULL AND l.expires_at > v_now,
                          TIMESTAMPDIFF(MICROSECOND, v_now, l.expires_at),
                          TIMESTAMPDIFF(MICROSECOND, v_now - INTERVAL p_delay_us MICROSECOND,
                                        LEAST(l.expires_at, COALESCE(l.broken_at, l.expires_at))))
                  INTO o_owner, o_mode, o_expires_us
                  FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
                 WHERE h.name = p_name AND h.lease_id = v_dead AND (p_mode = 'X' OR h.mode = 'X')
                 ORDER BY h.mode DESC
                 LIMIT 1;
                SET o_status = 2;
                LEAVE decide;
            END IF;
        END LOOP takeover;

        -- Grant: the hold's AUTO_INCREMENT is the fencing token. In the
        -- caller's transaction, the pending row's deletion comes first.
        IF p_in_tx THEN
            DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
        END IF;
        IF p_upgrade <> 0 AND p_payload = '' THEN
            SET p_payload = COALESCE(v_payload, '');
        END IF;
        INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
        VALUES (p_name, p_lease, p_request, p_mode, SYSDATE(6), p_payload);
        SET o_token = LAST_INSERT_ID();
        SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
        -- Take the dead leases over, in id order (the same leases as above,
        -- all of them dead and locked: no hold of the name can be added, but
        -- this grant's, nor one of theirs deleted, while their rows and the
        -- name's row are locked).
        SET v_last = NULL;
        takeover2: LOOP
            SELECT MIN(lease_id) INTO v_dead
              FROM sqldlm_holders
             WHERE name = p_name AND token <> p_upgrade AND token <> o_token AND (p_mode = 'X' OR mode = 'X')
               AND (v_last IS NULL OR lease_id > v_last);
            IF v_dead IS NULL THEN
                LEAVE takeover2;
            END IF;
            SET v_last = v_dead;
            CALL sqldlm_take_over(p_name, v_dead, p_mode, v_self, v_audit, v_taken);
            SET o_taken = o_taken + v_taken;
        END LOOP takeover2;
        IF v_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            VALUES (SYSDATE(6), IF(p_upgrade <> 0, 'upgrade', 'grant'), p_name, v_self, p_lease, o_token, p_mode, p_payload,
                    IF(p_upgrade <> 0, CONCAT('from token ', p_upgrade), ''));
        END IF;
        IF p_upgrade <> 0 THEN
            DELETE FROM sqldlm_holders WHERE token = p_upgrade;
        END IF;
        UPDATE sqldlm_locks SET token = o_token, updated_at = SYSDATE(6) WHERE name = p_name;
        -- (A request made with sqldlm_acquire_tx has no waiter row, and a
        -- delete that finds none would take a gap lock at REPEATABLE READ.)
        IF p_in_tx THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
        END IF;
        IF NOT p_in_tx OR v_n > 0 THEN
            DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
        END IF;
        SET o_status = 1, o_granted = TRUE;
    END decide;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;

-- +goose Down
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DROP PROCEDURE sqldlm_acquire_decide;

-- Version 6's sqldlm_acquire_decide, as 00005 defines it.

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_acquire_decide(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_upgrade BIGINT,
    IN p_payload VARBINARY(4096), IN p_delay_us BIGINT, IN p_in_tx BOOLEAN,
    OUT o_status INT, OUT o_token BIGINT, OUT o_owner VARBINARY(255), OUT o_mode CHAR(1) CHARACTER SET ascii,
    OUT o_expires_us BIGINT, OUT o_ahead INT, OUT o_taken INT, OUT o_granted BOOLEAN)
BEGIN
    DECLARE v_now DATETIME(6);
    DECLARE v_n INT;
    DECLARE v_locked INT;
    DECLARE v_ok BOOLEAN;
    DECLARE v_dead BIGINT DEFAULT NULL;
    DECLARE v_last BIGINT DEFAULT NULL;
    DECLARE v_exists INT;
    DECLARE v_top BIGINT DEFAULT NULL;
    DECLARE v_seen BIGINT DEFAULT NULL;
    DECLARE v_self VARBINARY(255) DEFAULT NULL;
    DECLARE v_payload VARBINARY(1024) DEFAULT NULL;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE v_taken INT;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    SET o_status = 0, o_token = NULL, o_owner = NULL, o_mode = NULL, o_expires_us = NULL, o_ahead = 0,
        o_taken = 0, o_granted = FALSE;
    decide: BEGIN
        -- Phase 1: consistent reads only. A withdrawn request first.
        SELECT COUNT(*) INTO v_n FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request;
        IF v_n > 0 THEN
            SET o_status = 6;
            LEAVE decide;
        END IF;
        SET v_now = SYSDATE(6);
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now;
        IF v_n = 0 THEN
            IF p_in_tx THEN
                -- An old snapshot may show an expiry that renewals have
                -- since moved: trusted only if it has the pending row.
                SELECT COUNT(*) INTO v_n FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
                IF v_n = 0 THEN
                    SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644,
                        MESSAGE_TEXT = 'sqldlm isolation: the transaction''s snapshot predates this request; run the transaction at READ COMMITTED';
                END IF;
            END IF;
            SET o_status = 3;
            LEAVE decide;
        END IF;
        -- A repeated request returns the hold it already obtained.
        SELECT MAX(token) INTO o_token FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
        IF o_token IS NOT NULL THEN
            IF p_in_tx THEN
                DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
            END IF;
            SET o_status = 1;
            LEAVE decide;
        END IF;
        IF p_upgrade <> 0 THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders
             WHERE token = p_upgrade AND lease_id = p_lease AND name = p_name;
            IF v_n = 0 THEN
                SET o_status = 4;
                LEAVE decide;
            END IF;
            SELECT COUNT(*) INTO v_n
              FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
             WHERE w.name = p_name AND w.upgrade_token IS NOT NULL AND w.upgrade_token <> p_upgrade
               AND l.broken_at IS NULL AND l.expires_at > v_now;
            IF v_n > 0 THEN
                SET o_status = 5;
                LEAVE decide;
            END IF;
        END IF;
        CALL sqldlm_acquire_check(p_name, p_lease, p_request, p_mode, p_upgrade, v_now, p_delay_us,
                                  o_owner, o_mode, o_expires_us, o_ahead);
        IF o_mode IS NOT NULL OR o_ahead > 0 THEN
            SET o_status = 2;
            LEAVE decide;
        END IF;

        -- Phase 2. (1) The name's row, locked (a locking read sees the
        -- latest committed version).
        SELECT COUNT(*), MAX(token) INTO v_exists, v_top FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
        IF p_in_tx AND v_exists > 0 THEN
            SELECT MAX(token) INTO v_seen FROM sqldlm_locks WHERE name = p_name;
            IF v_seen IS NULL OR v_seen <> v_top THEN
                SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644,
                    MESSAGE_TEXT = 'sqldlm isolation: the transaction''s snapshot predates the last grant of this name; run it at READ COMMITTED';
            END IF;
        END IF;
        -- (2) The requesting lease, shared (not in the caller's transaction,
        -- where the lock would last until it ends), then the clock.
        IF NOT p_in_tx THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = p_lease LOCK IN SHARE MODE;
        END IF;
        SET v_now = SYSDATE(6);
        SELECT COUNT(*), MAX(owner) INTO v_n, v_self FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now;
        IF v_n = 0 THEN
            IF p_in_tx THEN
                SELECT COUNT(*) INTO v_n FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
                IF v_n = 0 THEN
                    SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644,
                        MESSAGE_TEXT = 'sqldlm isolation: the transaction''s snapshot predates this request; run the transaction at READ COMMITTED';
                END IF;
            END IF;
            SET o_status = 3;
            LEAVE decide;
        END IF;
        -- (1') The name's row created if missing: ON DUPLICATE KEY takes the
        -- row's exclusive lock at once (INSERT IGNORE would take a shared
        -- one, and two sessions upgrading theirs deadlock). If another
        -- session inserted it meanwhile, nothing is changed, and the snapshot
        -- is checked against its token.
        IF v_exists = 0 THEN
            INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, SYSDATE(6))
                ON DUPLICATE KEY UPDATE token = token;
            IF p_in_tx THEN
                SELECT MAX(token) INTO v_top FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
                SELECT MAX(token) INTO v_seen FROM sqldlm_locks WHERE name = p_name;
                IF v_seen IS NULL OR v_seen <> v_top THEN
                    SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = 1644,
                        MESSAGE_TEXT = 'sqldlm isolation: the transaction''s snapshot predates the last grant of this name; run it at READ COMMITTED';
                END IF;
            END IF;
        END IF;
        -- (1'') Withdrawn? sqldlm_abandon locks the name's row (creating it
        -- if missing) before it records a withdrawal, and that row is locked
        -- now: a withdrawal that committed before is seen here, and none can
        -- commit until this transaction ends. Checked before the repeated
        -- request below: a withdrawn upgrade's kept hold is not returned. In
        -- the caller's transaction a locking read (the latest version,
        -- whatever the snapshot).
        IF p_in_tx THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_withdrawn
             WHERE lease_id = p_lease AND request_id = p_request LOCK IN SHARE MODE;
        ELSE
            SELECT COUNT(*) INTO v_n FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request;
        END IF;
        IF v_n > 0 THEN
            SET o_status = 6;
            LEAVE decide;
        END IF;
        -- A concurrent attempt of this same request may have committed.
        SELECT MAX(token) INTO o_token FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
        IF o_token IS NOT NULL THEN
            IF p_in_tx THEN
                DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
            END IF;
            SET o_status = 1;
            LEAVE decide;
        END IF;
        IF p_upgrade <> 0 THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders
             WHERE token = p_upgrade AND lease_id = p_lease AND name = p_name;
            IF v_n = 0 THEN
                SET o_status = 4;
                LEAVE decide;
            END IF;
            SELECT COUNT(*), MAX(payload) INTO v_n, v_payload
              FROM sqldlm_holders WHERE token = p_upgrade FOR UPDATE SKIP LOCKED;
            IF v_n = 0 THEN
                -- The shared hold is pinned by a fenced transaction (of the
                -- holder's own), or briefly locked by a Downgrade or
                -- SetPayload: the upgrade waits for it to end.
                SELECT owner, TIMESTAMPDIFF(MICROSECOND, v_now, expires_at), 'S'
                  INTO o_owner, o_expires_us, o_mode
                  FROM sqldlm_leases WHERE id = p_lease;
                SET o_status = 2;
                LEAVE decide;
            END IF;
        END IF;
        -- (3) The holds again, by the clock read after the locks.
        CALL sqldlm_acquire_check(p_name, p_lease, p_request, p_mode, p_upgrade, v_now, p_delay_us,
                                  o_owner, o_mode, o_expires_us, o_ahead);
        IF o_mode IS NOT NULL OR o_ahead > 0 THEN
            SET o_status = 2;
            LEAVE decide;
        END IF;
        -- Lock every dead lease with a conflicting hold, one at a time in id
        -- order: its row (without waiting), a re-check with a locking read
        -- and SYSDATE(6) that it has been dead for the lock delay (a live
        -- lease is dead since later than the cutoff, so one condition covers
        -- both), its holds of the name (without waiting). Nothing is changed
        -- until all of them are locked.
        takeover: LOOP
            SELECT MIN(h.lease_id) INTO v_dead
              FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
             WHERE h.name = p_name AND h.token <> p_upgrade AND (p_mode = 'X' OR h.mode = 'X')
               AND (v_last IS NULL OR h.lease_id > v_last)
               AND (l.id IS NULL OR l.broken_at IS NOT NULL OR l.expires_at <= v_now);
            IF v_dead IS NULL THEN
                LEAVE takeover;
            END IF;
            SET v_last = v_dead;
            SET v_ok = FALSE, v_locked = 0;
            SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = v_dead;
            IF v_n > 0 THEN
                SELECT COUNT(*) INTO v_locked FROM sqldlm_leases WHERE id = v_dead FOR UPDATE SKIP LOCKED;
            END IF;
            IF v_locked = v_n THEN
                IF v_n > 0 THEN
                    SELECT COUNT(*) INTO v_n FROM sqldlm_leases
                     WHERE id = v_dead
                       AND LEAST(expires_at, COALESCE(broken_at, expires_at)) > SYSDATE(6) - INTERVAL p_delay_us MICROSECOND
                       FOR UPDATE;
                END IF;
                IF v_n = 0 THEN
                    CALL sqldlm_lock_holds(p_name, v_dead, v_ok);
                END IF;
            END IF;
            IF NOT v_ok THEN
                -- Renewed after all, dead for less than the lock delay, or
                -- locked by another transaction (a fence, a renewal, a reap):
                -- blocked for now.
                SET v_now = SYSDATE(6);
                SELECT l.owner, h.mode,
                       IF(l.broken_at IS NULL AND l.expires_at > v_now,
                          TIMESTAMPDIFF(MICROSECOND, v_now, l.expires_at),
                          TIMESTAMPDIFF(MICROSECOND, v_now - INTERVAL p_delay_us MICROSECOND,
                                        LEAST(l.expires_at, COALESCE(l.broken_at, l.expires_at))))
                  INTO o_owner, o_mode, o_expires_us
                  FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
                 WHERE h.name = p_name AND h.lease_id = v_dead AND (p_mode = 'X' OR h.mode = 'X')
                 ORDER BY h.mode DESC
                 LIMIT 1;
                SET o_status = 2;
                LEAVE decide;
            END IF;
        END LOOP takeover;

        -- Grant: the hold's AUTO_INCREMENT is the fencing token. In the
        -- caller's transaction, the pending row's deletion comes first.
        IF p_in_tx THEN
            DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
        END IF;
        IF p_upgrade <> 0 AND p_payload = '' THEN
            SET p_payload = COALESCE(v_payload, '');
        END IF;
        INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
        VALUES (p_name, p_lease, p_request, p_mode, SYSDATE(6), p_payload);
        SET o_token = LAST_INSERT_ID();
        SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
        -- Take the dead leases over, in id order (the same leases as above:
        -- no hold of the name can be added, nor one of theirs deleted, while
        -- their rows and the name's row are locked).
        SET v_last = NULL;
        takeover2: LOOP
            SELECT MIN(h.lease_id) INTO v_dead
              FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
             WHERE h.name = p_name AND h.token <> p_upgrade AND (p_mode = 'X' OR h.mode = 'X')
               AND (v_last IS NULL OR h.lease_id > v_last)
               AND (l.id IS NULL OR l.broken_at IS NOT NULL OR l.expires_at <= v_now);
            IF v_dead IS NULL THEN
                LEAVE takeover2;
            END IF;
            SET v_last = v_dead;
            CALL sqldlm_take_over(p_name, v_dead, p_mode, v_self, v_audit, v_taken);
            SET o_taken = o_taken + v_taken;
        END LOOP takeover2;
        IF v_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            VALUES (SYSDATE(6), IF(p_upgrade <> 0, 'upgrade', 'grant'), p_name, v_self, p_lease, o_token, p_mode, p_payload,
                    IF(p_upgrade <> 0, CONCAT('from token ', p_upgrade), ''));
        END IF;
        IF p_upgrade <> 0 THEN
            DELETE FROM sqldlm_holders WHERE token = p_upgrade;
        END IF;
        UPDATE sqldlm_locks SET token = o_token, updated_at = SYSDATE(6) WHERE name = p_name;
        -- (A request made with sqldlm_acquire_tx has no waiter row, and a
        -- delete that finds none would take a gap lock at REPEATABLE READ.)
        IF p_in_tx THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
        END IF;
        IF NOT p_in_tx OR v_n > 0 THEN
            DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
        END IF;
        SET o_status = 1, o_granted = TRUE;
    END decide;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;
