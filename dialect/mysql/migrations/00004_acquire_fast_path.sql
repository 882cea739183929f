-- sqldlm schema version 4 for MySQL 8 and MariaDB 10.6+: a fast path in
-- sqldlm_acquire, and plans that do not depend on the tables' statistics.
--
-- sqldlm_acquire (not an upgrade) first reads, in one consistent read and
-- without a row lock, whether its lease is live, whether the request has a
-- waiter row, whether the name is in use (any hold of it, or
-- a waiter of it ahead of this request: one queued earlier, or any pending
-- upgrade), and whether the name's sqldlm_locks row exists. Then:
--
--   - a name in use (a repeated request's own hold included) is probed
--     with consistent reads only (the conflicting hold that blocks longest,
--     the live waiters ahead, the request's own hold: a repeated request
--     returns it): a blocked request rolls back a transaction that wrote
--     nothing and locked nothing, and inserts its waiter row only if it has
--     none yet;
--   - a name not in use (uncontended, or this request first in its queue)
--     is granted with the name's row locked FOR UPDATE SKIP LOCKED
--     (inserted when missing: the only statement of the fast path that can
--     wait for another grant's row lock, so the only one run under the
--     bounded innodb_lock_wait_timeout), the own lease locked in share mode
--     and checked live by SYSDATE(6) read after the lock, and the name
--     checked again, now that its row is locked (no grant of the name can
--     commit meanwhile); then the hold, the audit row if audit is on (the
--     setting read once, in that same statement), the name's token, the own
--     waiter row's delete only if there is one, COMMIT. No no-op write.
--
-- Everything else (a dead or missing own lease, an upgrade, a conflicting
-- hold of a dead lease to take over, compatible shared holds, waiters ahead
-- of dead leases or in compatible modes, the name's row locked by another
-- transaction) goes through the version 3 logic, sqldlm_acquire_decide,
-- unchanged, with the same lock wait bound as before. The fast path grants
-- only where that logic grants too: no hold of the name at all, no waiter
-- ahead of any mode or lease, the own lease live after its share lock, all
-- read with the name's row locked; it refuses only on a conflicting hold or
-- a conflicting live waiter ahead, as sqldlm_acquire_check does.
--
-- Sessions that wait on an uncommitted first insert of a name's row (by
-- the fast path, sqldlm_acquire_decide or sqldlm_acquire_tx) get gap locks
-- when it is rolled back and then deadlock on their own inserts: InnoDB
-- rolls the victim's whole transaction back (1213), before anything of it
-- could commit. A deadlock of the fast path's insert sends the call to the
-- full path; one of sqldlm_acquire_decide is retried, twice at most, inside
-- the call (a third raises it, and the client retries). A lock wait timeout
-- (1205) rolls back only the statement: the EXIT handler rolls the rest
-- back before it re-raises, as in every version.
--
-- Every read of sqldlm_holders and sqldlm_waiters by name in sqldlm_acquire
-- and sqldlm_acquire_check names its index (FORCE INDEX) and joins the
-- leases after the holds or waiters (STRAIGHT_JOIN), so that the plan does
-- not change with the statistics, whatever a client holding many locks of
-- one lease does to them.
--
-- sqldlm_release with audit off is one DELETE (reading the setting in a
-- subquery), with no nested CALL; the time zone is set only when an audit
-- row is written.
--
-- Down restores the version 3 procedures as 00001 and 00003 define them.

-- +goose Up
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DROP PROCEDURE IF EXISTS sqldlm_acquire;
DROP PROCEDURE IF EXISTS sqldlm_acquire_check;

-- sqldlm_acquire_check: as in version 1, with the plan fixed.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_acquire_check(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_upgrade BIGINT, IN p_now DATETIME(6), IN p_delay_us BIGINT,
    OUT o_owner VARBINARY(255), OUT o_mode CHAR(1) CHARACTER SET ascii,
    OUT o_expires_us BIGINT, OUT o_ahead INT)
BEGIN
    DECLARE v_waiter BIGINT DEFAULT NULL;
    DECLARE v_cutoff DATETIME(6) DEFAULT p_now - INTERVAL p_delay_us MICROSECOND;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    SET o_owner = NULL, o_mode = NULL, o_expires_us = NULL, o_ahead = 0;
    -- A live lease is dead since later than v_cutoff (its expires_at is
    -- after p_now), so one condition covers live and delayed leases.
    SELECT l.owner, h.mode,
           IF(l.broken_at IS NULL AND l.expires_at > p_now,
              TIMESTAMPDIFF(MICROSECOND, p_now, l.expires_at),
              TIMESTAMPDIFF(MICROSECOND, v_cutoff, LEAST(l.expires_at, COALESCE(l.broken_at, l.expires_at)))) AS blocks_us
      INTO o_owner, o_mode, o_expires_us
      FROM sqldlm_holders h FORCE INDEX (sqldlm_holders_name) STRAIGHT_JOIN sqldlm_leases l ON l.id = h.lease_id
     WHERE h.name = p_name AND h.token <> p_upgrade AND (p_mode = 'X' OR h.mode = 'X')
       AND LEAST(l.expires_at, COALESCE(l.broken_at, l.expires_at)) > v_cutoff
     ORDER BY blocks_us DESC
     LIMIT 1;
    IF p_upgrade = 0 THEN
        SELECT MAX(id) INTO v_waiter FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_lease)
         WHERE lease_id = p_lease AND request_id = p_request;
        SELECT COUNT(*) INTO o_ahead
          FROM sqldlm_waiters w FORCE INDEX (sqldlm_waiters_name) STRAIGHT_JOIN sqldlm_leases l ON l.id = w.lease_id
         WHERE w.name = p_name AND l.broken_at IS NULL AND l.expires_at > p_now
           AND NOT (w.lease_id = p_lease AND w.request_id = p_request)
           AND (w.upgrade_token IS NOT NULL
                OR ((p_mode = 'X' OR w.mode = 'X') AND w.id < COALESCE(v_waiter, 9223372036854775807)));
    END IF;
END
-- +goose StatementEnd

-- sqldlm_acquire: the same parameters and result sets as in version 3 (see
-- 00003), with the fast path described above in front of
-- sqldlm_acquire_decide.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_acquire(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_enqueue BOOLEAN, IN p_upgrade BIGINT,
    IN p_payload VARBINARY(4096), IN p_delay_us BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE saved_lwt BIGINT DEFAULT @@session.innodb_lock_wait_timeout;
    DECLARE v_bounded BOOLEAN DEFAULT FALSE;
    DECLARE v_status INT DEFAULT 0;
    DECLARE v_token BIGINT DEFAULT NULL;
    DECLARE v_owner VARBINARY(255) DEFAULT NULL;
    DECLARE v_mode CHAR(1) CHARACTER SET ascii DEFAULT NULL;
    DECLARE v_expires_us BIGINT DEFAULT NULL;
    DECLARE v_ahead INT DEFAULT 0;
    DECLARE v_taken INT DEFAULT 0;
    DECLARE v_granted BOOLEAN DEFAULT FALSE;
    DECLARE v_now DATETIME(6);
    DECLARE v_live BOOLEAN DEFAULT FALSE;
    DECLARE v_used BOOLEAN DEFAULT TRUE;
    DECLARE v_row INT DEFAULT 0;
    DECLARE v_waiter BIGINT DEFAULT NULL;
    DECLARE v_queued BOOLEAN DEFAULT FALSE;
    DECLARE v_self VARBINARY(255) DEFAULT NULL;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE v_attempt INT DEFAULT 0;
    DECLARE v_deadlock BOOLEAN DEFAULT FALSE;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        SET SESSION innodb_lock_wait_timeout = saved_lwt;
        RESIGNAL;
    END;

    SET time_zone = '+00:00';
    SET p_upgrade = COALESCE(p_upgrade, 0);
    SET p_payload = COALESCE(p_payload, '');
    -- At most 100 years, so that the date arithmetic stays within DATETIME.
    SET p_delay_us = LEAST(GREATEST(COALESCE(p_delay_us, 0), 0), 3155760000000000);
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    fast: BEGIN
        IF p_upgrade <> 0 THEN
            LEAVE fast;
        END IF;
        -- (1) One consistent read, no row lock.
        SET v_now = SYSDATE(6);
        SELECT (SELECT COUNT(*) FROM sqldlm_leases
                 WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now) > 0,
               (SELECT MAX(id) FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_lease)
                 WHERE lease_id = p_lease AND request_id = p_request),
               EXISTS (SELECT 1 FROM sqldlm_holders FORCE INDEX (sqldlm_holders_name) WHERE name = p_name)
               OR EXISTS (SELECT 1 FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_name)
                        WHERE name = p_name AND NOT (lease_id = p_lease AND request_id = p_request)
                          AND (upgrade_token IS NOT NULL
                               OR id < COALESCE((SELECT MAX(id) FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_lease)
                                                  WHERE lease_id = p_lease AND request_id = p_request),
                                                9223372036854775807))),
               (SELECT COUNT(*) FROM sqldlm_locks WHERE name = p_name)
          INTO v_live, v_waiter, v_used, v_row;
        IF NOT v_live THEN
            LEAVE fast;
        END IF;
        -- (A hold this request already obtained is a hold of the name: the
        -- probe below finds it.)
        SET v_queued = v_waiter IS NOT NULL;
        IF v_used THEN
            -- (2b) Blocked? sqldlm_acquire_check's reads, consistent, no
            -- lock: the conflicting hold that blocks longest (live, or dead
            -- for less than the lock delay), then the live waiters ahead and,
            -- read after it, the request's own hold (an attempt of this same
            -- request, a retry, may have committed since (1)).
            SELECT l.owner, h.mode,
                   IF(l.broken_at IS NULL AND l.expires_at > v_now,
                      TIMESTAMPDIFF(MICROSECOND, v_now, l.expires_at),
                      TIMESTAMPDIFF(MICROSECOND, v_now - INTERVAL p_delay_us MICROSECOND,
                                    LEAST(l.expires_at, COALESCE(l.broken_at, l.expires_at)))) AS blocks_us
              INTO v_owner, v_mode, v_expires_us
              FROM sqldlm_holders h FORCE INDEX (sqldlm_holders_name) STRAIGHT_JOIN sqldlm_leases l ON l.id = h.lease_id
             WHERE h.name = p_name AND (p_mode = 'X' OR h.mode = 'X')
               AND LEAST(l.expires_at, COALESCE(l.broken_at, l.expires_at)) > v_now - INTERVAL p_delay_us MICROSECOND
             ORDER BY blocks_us DESC
             LIMIT 1;
            SELECT COUNT(*),
                   (SELECT MAX(token) FROM sqldlm_holders FORCE INDEX (sqldlm_holders_lease)
                     WHERE lease_id = p_lease AND request_id = p_request)
              INTO v_ahead, v_token
              FROM sqldlm_waiters w FORCE INDEX (sqldlm_waiters_name) STRAIGHT_JOIN sqldlm_leases l ON l.id = w.lease_id
             WHERE w.name = p_name AND l.broken_at IS NULL AND l.expires_at > v_now
               AND NOT (w.lease_id = p_lease AND w.request_id = p_request)
               AND (w.upgrade_token IS NOT NULL
                    OR ((p_mode = 'X' OR w.mode = 'X') AND w.id < COALESCE(v_waiter, 9223372036854775807)));
            IF v_token IS NOT NULL THEN
                SET v_status = 1;
            ELSEIF v_mode IS NOT NULL OR v_ahead > 0 THEN
                SET v_status = 2;
            ELSE
                -- Not blocked: a takeover, compatible holds, waiters ahead
                -- of dead leases or in compatible modes.
                SET v_owner = NULL, v_expires_us = NULL, v_ahead = 0;
            END IF;
            LEAVE fast;
        END IF;
        -- (2) The name's row, locked without waiting (another grant of the
        -- name holds it: the full path waits for it), or inserted.
        IF v_row > 0 THEN
            SELECT COUNT(*) INTO v_row FROM sqldlm_locks WHERE name = p_name FOR UPDATE SKIP LOCKED;
            IF v_row = 0 THEN
                LEAVE fast;
            END IF;
        ELSE
            -- The insert waits for another transaction inserting the same
            -- name (one acquiring in a caller's transaction may hold it for
            -- long): at most a second, then 1205 for the client to retry.
            -- A deadlock (1213) here has rolled the transaction back: the
            -- full path starts over.
            SET SESSION innodb_lock_wait_timeout = LEAST(saved_lwt, 1);
            SET v_bounded = TRUE;
            BEGIN
                DECLARE CONTINUE HANDLER FOR 1213 SET v_deadlock = TRUE;
                INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, SYSDATE(6))
                    ON DUPLICATE KEY UPDATE token = token;
            END;
            IF v_deadlock THEN
                LEAVE fast;
            END IF;
        END IF;
        -- (3) The own lease in share mode (it cannot be broken or reaped
        -- until the commit), live by SYSDATE(6) read after the lock; the name
        -- free, read now that its row is locked; the own waiter row; the
        -- audit setting.
        SET v_live = FALSE, v_used = TRUE;
        SELECT broken_at IS NULL AND expires_at > SYSDATE(6), owner,
               EXISTS (SELECT 1 FROM sqldlm_holders FORCE INDEX (sqldlm_holders_name) WHERE name = p_name)
               OR EXISTS (SELECT 1 FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_name)
                        WHERE name = p_name AND NOT (lease_id = p_lease AND request_id = p_request)
                          AND (upgrade_token IS NOT NULL
                               OR id < COALESCE((SELECT MAX(id) FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_lease)
                                                  WHERE lease_id = p_lease AND request_id = p_request),
                                                9223372036854775807))),
               (SELECT MAX(id) FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_lease)
                 WHERE lease_id = p_lease AND request_id = p_request),
               (SELECT COALESCE(MAX(audit), FALSE) FROM sqldlm_settings WHERE id = 1)
          INTO v_live, v_self, v_used, v_waiter, v_audit
          FROM sqldlm_leases WHERE id = p_lease LOCK IN SHARE MODE;
        IF NOT v_live OR v_used THEN
            LEAVE fast;
        END IF;
        -- (4) Grant: the hold (its AUTO_INCREMENT is the token), its audit
        -- row, the name's token, the own waiter row if there is one.
        INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
        VALUES (p_name, p_lease, p_request, p_mode, SYSDATE(6), p_payload);
        SET v_token = LAST_INSERT_ID();
        IF v_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            VALUES (SYSDATE(6), 'grant', p_name, v_self, p_lease, v_token, p_mode, p_payload, '');
        END IF;
        UPDATE sqldlm_locks SET token = v_token, updated_at = SYSDATE(6) WHERE name = p_name;
        IF v_waiter IS NOT NULL THEN
            DELETE FROM sqldlm_waiters WHERE id = v_waiter;
        END IF;
        COMMIT;
        SET v_status = 1, v_granted = TRUE;
    END fast;

    IF v_status = 0 THEN
        -- The version 3 logic, in a transaction of its own.
        ROLLBACK;
        SET v_queued = FALSE;
        -- Wait at most a second for a row lock. The name's row is held for
        -- long only by a caller's transaction that acquired in it
        -- (sqldlm_acquire_tx); a statement left waiting behind it after its
        -- client gave up (the driver closes the connection, but the server
        -- notices only once the wait ends) could otherwise commit a grant
        -- much later than the client's re-withdrawals. The error (1205) is
        -- retried by the client.
        IF NOT v_bounded THEN
            SET SESSION innodb_lock_wait_timeout = LEAST(saved_lwt, 1);
            SET v_bounded = TRUE;
        END IF;
        attempt: LOOP
            SET v_attempt = v_attempt + 1, v_deadlock = FALSE;
            SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
            START TRANSACTION;
            IF v_attempt < 3 THEN
                BEGIN
                    DECLARE CONTINUE HANDLER FOR 1213 SET v_deadlock = TRUE;
                    CALL sqldlm_acquire_decide(p_name, p_lease, p_request, p_mode, p_upgrade, p_payload, p_delay_us, FALSE,
                                               v_status, v_token, v_owner, v_mode, v_expires_us, v_ahead, v_taken, v_granted);
                END;
            ELSE
                CALL sqldlm_acquire_decide(p_name, p_lease, p_request, p_mode, p_upgrade, p_payload, p_delay_us, FALSE,
                                           v_status, v_token, v_owner, v_mode, v_expires_us, v_ahead, v_taken, v_granted);
            END IF;
            IF NOT v_deadlock THEN
                LEAVE attempt;
            END IF;
            -- InnoDB rolled the whole transaction back.
            ROLLBACK;
            SET v_status = 0, v_token = NULL, v_owner = NULL, v_mode = NULL, v_expires_us = NULL, v_ahead = 0,
                v_taken = 0, v_granted = FALSE;
        END LOOP attempt;
        IF v_granted THEN
            COMMIT;
        ELSE
            SET v_taken = 0;
        END IF;
        -- Phase 1's reads are separate snapshots: an attempt of this same
        -- request that committed between them (a retry racing the original)
        -- turns a refusal into the grant it obtained.
        IF v_status IN (2, 4, 5) THEN
            SELECT MAX(token) INTO v_token FROM sqldlm_holders FORCE INDEX (sqldlm_holders_lease)
             WHERE lease_id = p_lease AND request_id = p_request;
            IF v_token IS NOT NULL THEN
                SET v_status = 1;
            END IF;
        END IF;
    END IF;
    -- Every other outcome changes nothing.
    IF NOT v_granted THEN
        ROLLBACK;
    END IF;
    IF v_status = 2 AND p_enqueue AND NOT v_queued THEN
        -- The decision above was taken in a transaction that has ended: the
        -- lease may have died, and been deleted with its waiter rows, since.
        -- Lock it in share mode (lease before waiter rows, the order
        -- sqldlm_delete_lease and sqldlm_reap lock in) and enqueue only if it
        -- is still live, so that no waiter row outlives its lease. The lease
        -- is X-locked only briefly (renewal, deletion, reap), or for the
        -- length of a caller's transaction that takes a dead lease over
        -- (sqldlm_acquire_tx): the wait is bounded like every other here.
        IF NOT v_bounded THEN
            SET SESSION innodb_lock_wait_timeout = LEAST(saved_lwt, 1);
            SET v_bounded = TRUE;
        END IF;
        SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
        START TRANSACTION;
        SELECT COUNT(*) > 0 INTO v_live FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > SYSDATE(6) LOCK IN SHARE MODE;
        IF v_live THEN
            INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since)
            VALUES (p_name, p_lease, p_request, p_mode, NULLIF(p_upgrade, 0), SYSDATE(6))
                ON DUPLICATE KEY UPDATE lease_id = lease_id;
            COMMIT;
        ELSE
            ROLLBACK;
            SET v_status = 3, v_owner = NULL, v_mode = NULL, v_expires_us = NULL, v_ahead = 0;
        END IF;
    END IF;
    SET time_zone = saved_tz;
    IF v_bounded THEN
        SET SESSION innodb_lock_wait_timeout = saved_lwt;
    END IF;
    SELECT v_status AS status, v_token AS token, v_owner AS owner, v_mode AS mode,
           v_expires_us AS expires_in_us, v_ahead AS waiters_ahead, v_taken AS took_over;
END
-- +goose StatementEnd

-- sqldlm_release deletes a hold and returns 1, or 0 if it did not exist. With
-- audit off it is one DELETE that reads the setting too; with audit on that
-- DELETE deletes nothing and sqldlm_release_hold does the work, as in
-- version 3.
DROP PROCEDURE IF EXISTS sqldlm_release;
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_release(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_n INT;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    -- With audit off, one statement; otherwise it deletes nothing.
    DELETE FROM sqldlm_holders
     WHERE token = p_token AND lease_id = p_lease AND name = p_name
       AND NOT EXISTS (SELECT 1 FROM sqldlm_settings WHERE id = 1 AND audit);
    SET v_n = ROW_COUNT();
    IF v_n = 0 THEN
        SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
        IF v_audit THEN
            SET time_zone = '+00:00';
            CALL sqldlm_release_hold(p_name, p_lease, p_token, v_n);
        END IF;
    END IF;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n AS released;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;

-- +goose Down
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DROP PROCEDURE sqldlm_release;
DROP PROCEDURE sqldlm_acquire;
DROP PROCEDURE sqldlm_acquire_check;

-- Version 3's procedures, as 00001 and 00003 define them.

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_acquire_check(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_upgrade BIGINT, IN p_now DATETIME(6), IN p_delay_us BIGINT,
    OUT o_owner VARBINARY(255), OUT o_mode CHAR(1) CHARACTER SET ascii,
    OUT o_expires_us BIGINT, OUT o_ahead INT)
BEGIN
    DECLARE v_waiter BIGINT DEFAULT NULL;
    DECLARE v_cutoff DATETIME(6) DEFAULT p_now - INTERVAL p_delay_us MICROSECOND;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    SET o_owner = NULL, o_mode = NULL, o_expires_us = NULL, o_ahead = 0;
    -- A live lease is dead since later than v_cutoff (its expires_at is
    -- after p_now), so one condition covers live and delayed leases.
    SELECT l.owner, h.mode,
           IF(l.broken_at IS NULL AND l.expires_at > p_now,
              TIMESTAMPDIFF(MICROSECOND, p_now, l.expires_at),
              TIMESTAMPDIFF(MICROSECOND, v_cutoff, LEAST(l.expires_at, COALESCE(l.broken_at, l.expires_at)))) AS blocks_us
      INTO o_owner, o_mode, o_expires_us
      FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
     WHERE h.name = p_name AND h.token <> p_upgrade AND (p_mode = 'X' OR h.mode = 'X')
       AND LEAST(l.expires_at, COALESCE(l.broken_at, l.expires_at)) > v_cutoff
     ORDER BY blocks_us DESC
     LIMIT 1;
    IF p_upgrade = 0 THEN
        SELECT MAX(id) INTO v_waiter FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
        SELECT COUNT(*) INTO o_ahead
          FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
         WHERE w.name = p_name AND l.broken_at IS NULL AND l.expires_at > p_now
           AND NOT (w.lease_id = p_lease AND w.request_id = p_request)
           AND (w.upgrade_token IS NOT NULL
                OR ((p_mode = 'X' OR w.mode = 'X') AND w.id < COALESCE(v_waiter, 9223372036854775807)));
    END IF;
END
-- +goose StatementEnd

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_acquire(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_enqueue BOOLEAN, IN p_upgrade BIGINT,
    IN p_payload VARBINARY(4096), IN p_delay_us BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE saved_lwt BIGINT DEFAULT @@session.innodb_lock_wait_timeout;
    DECLARE v_status INT DEFAULT 0;
    DECLARE v_token BIGINT DEFAULT NULL;
    DECLARE v_owner VARBINARY(255) DEFAULT NULL;
    DECLARE v_mode CHAR(1) CHARACTER SET ascii DEFAULT NULL;
    DECLARE v_expires_us BIGINT DEFAULT NULL;
    DECLARE v_ahead INT DEFAULT 0;
    DECLARE v_taken INT DEFAULT 0;
    DECLARE v_granted BOOLEAN DEFAULT FALSE;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        SET SESSION innodb_lock_wait_timeout = saved_lwt;
        RESIGNAL;
    END;

    SET time_zone = '+00:00';
    -- Wait at most a second for a row lock. The name's row is held for long
    -- only by a caller's transaction that acquired in it (sqldlm_acquire_tx);
    -- a statement left waiting behind it after its client gave up (the
    -- driver closes the connection, but the server notices only once the
    -- wait ends) could otherwise commit a grant much later than the client's
    -- re-withdrawals. The error (1205) is retried by the client.
    SET SESSION innodb_lock_wait_timeout = LEAST(saved_lwt, 1);
    SET p_upgrade = COALESCE(p_upgrade, 0);
    SET p_payload = COALESCE(p_payload, '');
    -- At most 100 years, so that the date arithmetic stays within DATETIME.
    SET p_delay_us = LEAST(GREATEST(COALESCE(p_delay_us, 0), 0), 3155760000000000);
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    CALL sqldlm_acquire_decide(p_name, p_lease, p_request, p_mode, p_upgrade, p_payload, p_delay_us, FALSE,
                               v_status, v_token, v_owner, v_mode, v_expires_us, v_ahead, v_taken, v_granted);
    IF v_granted THEN
        COMMIT;
    ELSE
        SET v_taken = 0;
    END IF;
    -- Phase 1's reads are separate snapshots: an attempt of this same request
    -- that committed between them (a retry racing the original) turns a
    -- refusal into the grant it obtained.
    IF v_status IN (2, 4, 5) THEN
        SELECT MAX(token) INTO v_token FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
        IF v_token IS NOT NULL THEN
            SET v_status = 1;
        END IF;
    END IF;
    -- Every other outcome changes nothing (a no-op after the COMMIT above).
    ROLLBACK;
    IF v_status = 2 AND p_enqueue THEN
        START TRANSACTION;
        INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since)
        VALUES (p_name, p_lease, p_request, p_mode, NULLIF(p_upgrade, 0), SYSDATE(6))
            ON DUPLICATE KEY UPDATE lease_id = lease_id;
        COMMIT;
    END IF;
    SET time_zone = saved_tz;
    SET SESSION innodb_lock_wait_timeout = saved_lwt;
    SELECT v_status AS status, v_token AS token, v_owner AS owner, v_mode AS mode,
           v_expires_us AS expires_in_us, v_ahead AS waiters_ahead, v_taken AS took_over;
END
-- +goose StatementEnd

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_release(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_n INT;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    CALL sqldlm_release_hold(p_name, p_lease, p_token, v_n);
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n AS released;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;
