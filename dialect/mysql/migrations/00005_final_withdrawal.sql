-- sqldlm schema version 5 for MySQL 8 and MariaDB 10.6+: a withdrawal is
-- final, and Fence locks nothing but the hold.
--
-- sqldlm_withdrawn records each withdrawn request (sqldlm_abandon): once that
-- record has committed, no statement of the request, however late it runs
-- (a retry, or a CALL still waiting in the server after its client gave up),
-- can grant it or queue it; it is answered status 6, withdrawn, and leaves no
-- row. sqldlm_abandon commits the record and the deletion of the request's
-- waiter row first, without locking the name's row, then deletes (or, for
-- an upgrade, keeps) the request's hold with the name's sqldlm_locks row
-- locked exclusively (inserting the row when missing):
--
--   - a grant (the fast path of sqldlm_acquire, phase 2 of
--     sqldlm_acquire_decide: sqldlm_acquire's full path and
--     sqldlm_acquire_tx) reads the record once it holds the name's row FOR
--     UPDATE (inserted when missing) and, outside a caller's transaction,
--     its own lease in share mode, before the check that returns a repeated
--     request's hold (a withdrawn upgrade's kept hold is not returned); in
--     the caller's transaction (sqldlm_acquire_tx) with a locking read, so
--     an old REPEATABLE READ snapshot cannot hide it;
--   - the first enqueue of a blocked request inserts its waiter row and then
--     reads the record with a locking read: either that read comes before
--     the record's insert (and the abandon's delete then finds the waiter
--     row, waiting for its insert to end), or it waits for the abandon and
--     sees the record (and rolls the waiter row back). Neither locks the
--     name's row, which a caller's transaction that acquired the name in it
--     holds until it ends: a blocked request still queues, and a waiter is
--     still withdrawn, meanwhile.
--
-- Phase 1 and the fast path's first read also read the record (consistent
-- reads, no lock), to answer a withdrawn request at once. Every lock wait of
-- these statements stays bounded by innodb_lock_wait_timeout = 1 (1205: the
-- client retries), and so are sqldlm_abandon's, which may wait for a caller's
-- transaction that acquired the name in it. sqldlm_abandon, sqldlm_delete_lease
-- and sqldlm_reap lock a lease's rows in the order holds, withdrawal records,
-- waiter rows.
--
-- sqldlm_abandon takes the request's name and a keep flag: with it (an
-- upgrade's withdrawal) the hold the request obtained is kept and its token
-- returned. sqldlm_delete_lease and sqldlm_reap delete the records of the
-- leases they delete, and sqldlm_reap, in its second transaction, up to
-- p_limit records older than an hour (dialect.WithdrawnRetention): a lease
-- that lives that long has no statement of a withdrawn request left running.
--
-- sqldlm_fence now only pins the hold (a shared lock, the latest version)
-- and bounds the transaction's idle time; the lease's liveness is read by
-- sqldlm_lease_live, called by the client outside the caller's transaction
-- after the pin. At SERIALIZABLE InnoDB turns the plain read of the lease
-- row that version 4's sqldlm_fence made into a shared lock held until the
-- caller's transaction ended, which held off the lease's renewals; and at
-- REPEATABLE READ a read in the caller's snapshot could see a lease renewed
-- since as expired (version 4 then returned status 2, retry the transaction).
--
-- sqldlm_release_tx (ReleaseTx) no longer reads the lease row in the
-- caller's transaction either (with audit on, version 4 read the owner for
-- the audit row there): the client passes the owner, read outside.
--
-- Down drops what Up created and restores the version 4 procedures as 00001,
-- 00003 and 00004 define them.

-- +goose Up
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

-- Withdrawn requests (sqldlm_abandon).
CREATE TABLE sqldlm_withdrawn (
    lease_id     BIGINT         NOT NULL,
    request_id   BIGINT         NOT NULL,
    name         VARBINARY(255) NOT NULL,
    withdrawn_at DATETIME(6)    NOT NULL,             -- SYSDATE(6) under UTC
    PRIMARY KEY (lease_id, request_id),
    KEY sqldlm_withdrawn_at (withdrawn_at)
) ENGINE=InnoDB;

-- The version 4 procedures that change, re-created below.
DROP PROCEDURE IF EXISTS sqldlm_acquire;
DROP PROCEDURE IF EXISTS sqldlm_acquire_decide;
DROP PROCEDURE IF EXISTS sqldlm_abandon;
DROP PROCEDURE IF EXISTS sqldlm_delete_lease;
DROP PROCEDURE IF EXISTS sqldlm_reap;
DROP PROCEDURE IF EXISTS sqldlm_fence;
DROP PROCEDURE IF EXISTS sqldlm_release_tx;

-- sqldlm_acquire_decide: as in version 3, with status 6 (withdrawn) read
-- first in phase 1 and, in phase 2, right after the name's row (inserted if
-- missing) and the own lease are locked.
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

-- sqldlm_acquire: as in version 4, with status 6 (withdrawn): read in the
-- fast path's first read and again under its locks, in the full path by
-- sqldlm_acquire_decide, and by the first enqueue after it inserts the
-- waiter row. A refusal is not turned into a repeated request's grant (status
-- 2, 4 or 5 and a hold of the request) for a withdrawn request.
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
    DECLARE v_withdrawn BOOLEAN DEFAULT FALSE;
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
               (SELECT COUNT(*) FROM sqldlm_locks WHERE name = p_name),
               EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request)
          INTO v_live, v_waiter, v_used, v_row, v_withdrawn;
        IF v_withdrawn THEN
            SET v_status = 6;
            LEAVE fast;
        END IF;
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
        -- audit setting; the request's withdrawal record (sqldlm_abandon
        -- writes it with the name's row locked: one committed before this
        -- lock is seen, none can commit before this transaction ends).
        SET v_live = FALSE, v_used = TRUE, v_withdrawn = FALSE;
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
               (SELECT COALESCE(MAX(audit), FALSE) FROM sqldlm_settings WHERE id = 1),
               EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request)
          INTO v_live, v_self, v_used, v_waiter, v_audit, v_withdrawn
          FROM sqldlm_leases WHERE id = p_lease LOCK IN SHARE MODE;
        IF v_withdrawn THEN
            SET v_status = 6;
            LEAVE fast;
        END IF;
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
             WHERE lease_id = p_lease AND request_id = p_request
               AND NOT EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request);
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
        -- lease may have died, and been deleted with its waiter rows, since,
        -- and the request may have been withdrawn. Lock the lease in share
        -- mode (lease before waiter rows, the order sqldlm_delete_lease and
        -- sqldlm_reap lock in) and enqueue only if it is still live, so that
        -- no waiter row outlives its lease. The lease is X-locked only
        -- briefly (renewal, deletion, reap), or for the length of a caller's
        -- transaction that takes a dead lease over (sqldlm_acquire_tx): the
        -- wait is bounded like every other here.
        --
        -- Then the withdrawal record, with a locking read after the waiter
        -- row is inserted: sqldlm_abandon inserts the record before it
        -- deletes the waiter row, so either this read comes first (the
        -- record is not there yet, and the abandon's delete then finds, or
        -- waits for, this waiter row and deletes it), or the record's insert
        -- does (this read waits for the abandon to end, sees the record and
        -- rolls the waiter row back). No row lock of the name: its row may be
        -- locked for as long as a caller's transaction that acquired the
        -- name in it (sqldlm_acquire_tx), and a blocked request must be able
        -- to queue meanwhile.
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
            SELECT COUNT(*) > 0 INTO v_withdrawn FROM sqldlm_withdrawn
             WHERE lease_id = p_lease AND request_id = p_request LOCK IN SHARE MODE;
            IF v_withdrawn THEN
                ROLLBACK;
                SET v_status = 6, v_owner = NULL, v_mode = NULL, v_expires_us = NULL, v_ahead = 0;
            ELSE
                COMMIT;
            END IF;
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

-- sqldlm_abandon withdraws request (p_lease, p_request) of name p_name for
-- good, in two transactions, each lock wait bounded to a second (1205: the
-- client retries the call; both are idempotent):
--
--   (1) it records the withdrawal in sqldlm_withdrawn (a repeated withdrawal
--       keeps the first record) and then deletes the request's waiter row,
--       and commits. A first enqueue inserts the waiter row and then reads
--       the record with a locking read, so one of the two sees the other's
--       row (see sqldlm_acquire). No lock of the name's row: a caller's
--       transaction that acquired the name in it (sqldlm_acquire_tx) holds
--       that row until it ends, and a waiter must be withdrawn meanwhile.
--   (2) it locks the name's sqldlm_locks row exclusively (inserting it when
--       missing), the row every grant of the name holds when it reads the
--       record: a grant of the request that read no record has committed by
--       now, and none can follow. Then, unless p_keep, it deletes the
--       request's hold if it obtained one (a release row 'abandoned' when
--       audit is on); with p_keep (an upgrade's withdrawal) it keeps that
--       hold, which replaced the caller's shared one, and reports its token.
--
-- Locks are taken in the order withdrawal record, waiter row (as
-- sqldlm_delete_lease and sqldlm_reap: holds, records, waiter rows), then
-- the name's row and holds. Result sets: unless p_keep, the names of the
-- deleted holds; then one row, kept: the kept hold's token, or NULL. A call
-- that failed in (2) has still recorded the withdrawal: no statement of the
-- request can grant or queue it any more.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_abandon(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT, IN p_keep BOOLEAN)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE saved_lwt BIGINT DEFAULT @@session.innodb_lock_wait_timeout;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE v_n INT;
    DECLARE v_kept BIGINT DEFAULT NULL;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        SET SESSION innodb_lock_wait_timeout = saved_lwt;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET SESSION innodb_lock_wait_timeout = LEAST(saved_lwt, 1);
    -- (1) The record, then the waiter row, committed at once: no lock of
    -- the name's row, which a caller's transaction may hold for long.
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    INSERT INTO sqldlm_withdrawn (lease_id, request_id, name, withdrawn_at)
    VALUES (p_lease, p_request, p_name, SYSDATE(6))
        ON DUPLICATE KEY UPDATE lease_id = lease_id;
    DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
    COMMIT;
    -- (2) The holds, with the name's row locked: a grant that read no record
    -- has committed by then.
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT COUNT(*) INTO v_n FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
    IF v_n = 0 THEN
        INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, SYSDATE(6))
            ON DUPLICATE KEY UPDATE token = token;
    END IF;
    IF p_keep THEN
        SELECT MAX(token) INTO v_kept FROM sqldlm_holders
         WHERE lease_id = p_lease AND request_id = p_request FOR UPDATE;
    ELSE
        SELECT name FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request FOR UPDATE;
        SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
        IF v_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            SELECT SYSDATE(6), 'release', h.name, COALESCE(l.owner, ''), h.lease_id, h.token, h.mode, h.payload, 'abandoned'
              FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
             WHERE h.lease_id = p_lease AND h.request_id = p_request
             ORDER BY h.token;
        END IF;
        DELETE FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
    END IF;
    COMMIT;
    SET time_zone = saved_tz;
    SET SESSION innodb_lock_wait_timeout = saved_lwt;
    SELECT v_kept AS kept;
END
-- +goose StatementEnd

-- sqldlm_fence pins hold p_token of lease p_lease on p_name in the caller's
-- transaction: a shared lock on the hold (a locking read: the latest
-- version, whatever the transaction's snapshot), so that no takeover,
-- release or reap can delete it until the transaction ends. It reads nothing
-- else, so it locks nothing else at any isolation level (at SERIALIZABLE
-- InnoDB turns plain reads into shared locks: a read of the lease row would
-- hold off the lease's renewals until the transaction ends). It returns one
-- row, pinned: 1, or 0 if the hold does not exist. The caller then checks
-- that the lease is live with sqldlm_lease_live, outside the transaction:
-- the pinned hold cannot be taken over meanwhile, and a lease that was live
-- after the pin was live while the hold was pinned.
--
-- When pinned, it bounds how long the transaction may then sit idle, so a
-- paused holder cannot pin the hold forever: on MariaDB with the session's
-- idle_transaction_timeout, on MySQL (which has no such variable) with the
-- session's wait_timeout, which ends an idle connection in or out of a
-- transaction. The value is p_idle_s seconds, or the session's own value if
-- it is already lower. Either setting stays on that pooled connection after
-- the transaction (nothing runs on the connection at the caller's commit to
-- put it back): MariaDB then ends any of its later transactions idle for
-- longer, and MySQL closes the connection once it sits idle in the pool for
-- longer (go-sql-driver notices and opens another). The variable is picked by
-- server with dynamic SQL, because MySQL rejects a procedure that names an
-- unknown system variable; the statement text holds only numbers.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_fence(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT, IN p_idle_s INT)
BEGIN
    DECLARE v_n INT;
    SELECT COUNT(*) INTO v_n FROM sqldlm_holders
     WHERE token = p_token AND lease_id = p_lease AND name = p_name LOCK IN SHARE MODE;
    IF v_n > 0 AND p_idle_s > 0 THEN
        IF VERSION() LIKE '%MariaDB%' THEN
            SET @sqldlm_fence_sql = CONCAT(
                'SET SESSION idle_transaction_timeout = IF(@@session.idle_transaction_timeout BETWEEN 1 AND ',
                p_idle_s, ', @@session.idle_transaction_timeout, ', p_idle_s, ')');
            PREPARE sqldlm_fence_stmt FROM @sqldlm_fence_sql;
            EXECUTE sqldlm_fence_stmt;
            DEALLOCATE PREPARE sqldlm_fence_stmt;
            SET @sqldlm_fence_sql = NULL;
        ELSE
            SET SESSION wait_timeout = LEAST(@@session.wait_timeout, p_idle_s);
        END IF;
    END IF;
    SELECT v_n > 0 AS pinned;
END
-- +goose StatementEnd

-- sqldlm_lease_live returns one row: live, 1 if lease p_id is live by
-- SYSDATE(6) in the latest committed state, else 0; and owner, the lease's
-- owner ('' if there is no such lease). A READ COMMITTED transaction of its
-- own (a fresh read that locks nothing, whatever the session's settings),
-- called by the client outside the caller's transaction: Fence's check after
-- sqldlm_fence, and the owner of sqldlm_release_tx's audit row.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_lease_live(IN p_id BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_n INT;
    DECLARE v_owner VARBINARY(255);
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT COUNT(*), COALESCE(MAX(owner), '') INTO v_n, v_owner FROM sqldlm_leases WHERE id = p_id;
    IF v_n > 0 THEN
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_id AND broken_at IS NULL AND expires_at > SYSDATE(6);
    END IF;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n AS live, v_owner AS owner;
END
-- +goose StatementEnd

-- sqldlm_release_tx deletes a hold inside the caller's transaction and
-- returns one row, released: 1, or 0 if the hold did not exist (a locking
-- read or a DELETE: the latest version, whatever the transaction's
-- snapshot). It reads no lease row: at SERIALIZABLE InnoDB turns a plain read
-- into a shared lock held until the transaction ends, and version 4 read the
-- lease's owner for the audit row, which held off the lease's renewals. With
-- audit on, the audit row's owner is p_owner, which the client reads outside
-- the transaction (sqldlm_lease_live): called with p_owner NULL while audit
-- is on, it locks the hold and returns 2, changing nothing else, and the
-- client calls it again with the owner. (The audit setting itself is read in
-- the transaction: at SERIALIZABLE that share-locks the settings row, so a
-- change of the setting waits for the transaction.) No transaction control;
-- on an error it puts the time zone back and re-raises.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_release_tx(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT,
                                   IN p_owner VARBINARY(1024))
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_n INT;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
    IF NOT v_audit THEN
        DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name;
        SET v_n = ROW_COUNT();
    ELSE
        SELECT COUNT(*) INTO v_n FROM sqldlm_holders
         WHERE token = p_token AND lease_id = p_lease AND name = p_name FOR UPDATE;
        IF v_n > 0 THEN
            IF p_owner IS NULL THEN
                SET v_n = 2;
            ELSE
                INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                SELECT SYSDATE(6), 'release', name, p_owner, lease_id, token, mode, payload, ''
                  FROM sqldlm_holders WHERE token = p_token;
                DELETE FROM sqldlm_holders WHERE token = p_token;
                SET v_n = ROW_COUNT();
            END IF;
        END IF;
    END IF;
    SET time_zone = saved_tz;
    SELECT v_n AS released;
END
-- +goose StatementEnd

-- sqldlm_delete_lease: as in version 3, deleting the lease's withdrawal
-- records too (after its holds, before its waiter rows).
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_delete_lease(IN p_id BIGINT)
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
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = p_id FOR UPDATE;
    SELECT name FROM sqldlm_holders WHERE lease_id = p_id FOR UPDATE;
    SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
    IF v_audit THEN
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT SYSDATE(6), 'release', h.name, COALESCE(l.owner, ''), h.lease_id, h.token, h.mode, h.payload, 'lease closed'
          FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
         WHERE h.lease_id = p_id
         ORDER BY h.token;
    END IF;
    DELETE FROM sqldlm_holders WHERE lease_id = p_id;
    DELETE FROM sqldlm_withdrawn WHERE lease_id = p_id;
    DELETE FROM sqldlm_waiters WHERE lease_id = p_id;
    DELETE FROM sqldlm_pending WHERE lease_id = p_id;
    DELETE FROM sqldlm_leases WHERE id = p_id;
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- sqldlm_reap: as in version 3, deleting the withdrawal records of the
-- leases it deletes and, in its second transaction, up to p_limit records
-- older than an hour (FOR UPDATE SKIP LOCKED, by primary key).
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_reap(IN p_limit INT, IN p_idle_us BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_now DATETIME(6);
    DECLARE v_cutoff DATETIME(6);
    DECLARE v_id BIGINT;
    DECLARE v_request BIGINT;
    DECLARE v_name VARBINARY(255);
    DECLARE v_token BIGINT;
    DECLARE v_done BOOLEAN DEFAULT FALSE;
    DECLARE v_ok BOOLEAN;
    DECLARE v_n INT;
    DECLARE v_locked INT;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE v_retention BIGINT;
    DECLARE v_leases INT DEFAULT 0;
    DECLARE v_holds INT DEFAULT 0;
    DECLARE v_waiters INT DEFAULT 0;
    DECLARE v_idle INT DEFAULT 0;
    DECLARE v_pruned INT DEFAULT 0;
    DECLARE dead CURSOR FOR
        SELECT id FROM sqldlm_leases
         WHERE broken_at IS NOT NULL OR expires_at <= v_now
         ORDER BY expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE idle CURSOR FOR
        SELECT name FROM sqldlm_locks k
         WHERE updated_at < v_cutoff
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = k.name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = k.name)
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE orphans CURSOR FOR
        SELECT lease_id, request_id FROM sqldlm_pending p
         WHERE NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = p.lease_id)
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE withdrawn CURSOR FOR
        SELECT lease_id, request_id FROM sqldlm_withdrawn
         WHERE withdrawn_at < v_now - INTERVAL 1 HOUR
         ORDER BY withdrawn_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE stale CURSOR FOR
        SELECT id FROM sqldlm_audit
         WHERE at < v_cutoff
         ORDER BY at, id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_done = TRUE;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SET v_now = SYSDATE(6);
    SELECT COALESCE(MAX(audit), FALSE), COALESCE(MAX(audit_retention_us), 604800000000)
      INTO v_audit, v_retention FROM sqldlm_settings WHERE id = 1;
    OPEN dead;
    leases: LOOP
        FETCH dead INTO v_id;
        IF v_done THEN
            LEAVE leases;
        END IF;
        CALL sqldlm_lock_holds(NULL, v_id, v_ok);
        IF v_ok THEN
            -- A grant in a caller's transaction that has not ended yet holds
            -- its request's pending row locked.
            SELECT COUNT(*) INTO v_n FROM sqldlm_pending WHERE lease_id = v_id;
            IF v_n > 0 THEN
                SELECT COUNT(*) INTO v_locked FROM sqldlm_pending WHERE lease_id = v_id FOR UPDATE SKIP LOCKED;
                SET v_ok = v_locked = v_n;
            END IF;
        END IF;
        IF v_ok THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders WHERE lease_id = v_id;
            IF v_n > 0 THEN
                SELECT name FROM sqldlm_holders WHERE lease_id = v_id;
                SET v_token = 0;
                holds: LOOP
                    SELECT MIN(token) INTO v_token FROM sqldlm_holders WHERE lease_id = v_id AND token > v_token;
                    IF v_token IS NULL THEN
                        LEAVE holds;
                    END IF;
                    IF v_audit THEN
                        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                        SELECT SYSDATE(6), 'expire', h.name, COALESCE(l.owner, ''), h.lease_id, h.token, h.mode, h.payload, ''
                          FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
                         WHERE h.token = v_token;
                    END IF;
                    DELETE FROM sqldlm_holders WHERE token = v_token;
                    SET v_holds = v_holds + ROW_COUNT();
                END LOOP holds;
            END IF;
            DELETE FROM sqldlm_withdrawn WHERE lease_id = v_id;
            DELETE FROM sqldlm_waiters WHERE lease_id = v_id;
            SET v_waiters = v_waiters + ROW_COUNT();
            DELETE FROM sqldlm_pending WHERE lease_id = v_id;
            DELETE FROM sqldlm_leases WHERE id = v_id;
            SET v_leases = v_leases + ROW_COUNT();
        END IF;
    END LOOP leases;
    CLOSE dead;
    COMMIT;

    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SET v_now = SYSDATE(6);
    SET v_cutoff = v_now - INTERVAL p_idle_us MICROSECOND;
    SET v_done = FALSE;
    OPEN idle;
    idle_rows: LOOP
        FETCH idle INTO v_name;
        IF v_done THEN
            LEAVE idle_rows;
        END IF;
        DELETE FROM sqldlm_locks WHERE name = v_name;
        SET v_idle = v_idle + ROW_COUNT();
    END LOOP idle_rows;
    CLOSE idle;
    SET v_done = FALSE;
    OPEN orphans;
    orphan_rows: LOOP
        FETCH orphans INTO v_id, v_request;
        IF v_done THEN
            LEAVE orphan_rows;
        END IF;
        DELETE FROM sqldlm_pending WHERE lease_id = v_id AND request_id = v_request;
    END LOOP orphan_rows;
    CLOSE orphans;
    -- Withdrawal records older than an hour (dialect.WithdrawnRetention),
    -- oldest first.
    SET v_done = FALSE;
    OPEN withdrawn;
    withdrawn_rows: LOOP
        FETCH withdrawn INTO v_id, v_request;
        IF v_done THEN
            LEAVE withdrawn_rows;
        END IF;
        DELETE FROM sqldlm_withdrawn WHERE lease_id = v_id AND request_id = v_request;
    END LOOP withdrawn_rows;
    CLOSE withdrawn;
    -- Audit rows past the retention, oldest first.
    SET v_cutoff = v_now - INTERVAL LEAST(v_retention, 3155760000000000) MICROSECOND;
    SET v_done = FALSE;
    OPEN stale;
    stale_rows: LOOP
        FETCH stale INTO v_id;
        IF v_done THEN
            LEAVE stale_rows;
        END IF;
        DELETE FROM sqldlm_audit WHERE id = v_id;
        SET v_pruned = v_pruned + ROW_COUNT();
    END LOOP stale_rows;
    CLOSE stale;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_leases AS leases, v_holds AS holds, v_waiters AS waiters, v_idle AS idle_locks, v_pruned AS audit_rows;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;

-- +goose Down
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DROP PROCEDURE sqldlm_release_tx;
DROP PROCEDURE sqldlm_lease_live;
DROP PROCEDURE sqldlm_fence;
DROP PROCEDURE sqldlm_reap;
DROP PROCEDURE sqldlm_delete_lease;
DROP PROCEDURE sqldlm_abandon;
DROP PROCEDURE sqldlm_acquire;
DROP PROCEDURE sqldlm_acquire_decide;
DROP TABLE sqldlm_withdrawn;

-- Version 4's procedures, as 00001, 00003 and 00004 define them.

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
        -- Phase 1: consistent reads only.
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

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_abandon(IN p_lease BIGINT, IN p_request BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT name FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request FOR UPDATE;
    SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
    IF v_audit THEN
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT SYSDATE(6), 'release', h.name, COALESCE(l.owner, ''), h.lease_id, h.token, h.mode, h.payload, 'abandoned'
          FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
         WHERE h.lease_id = p_lease AND h.request_id = p_request
         ORDER BY h.token;
    END IF;
    DELETE FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
    DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_delete_lease(IN p_id BIGINT)
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
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = p_id FOR UPDATE;
    SELECT name FROM sqldlm_holders WHERE lease_id = p_id FOR UPDATE;
    SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
    IF v_audit THEN
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT SYSDATE(6), 'release', h.name, COALESCE(l.owner, ''), h.lease_id, h.token, h.mode, h.payload, 'lease closed'
          FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
         WHERE h.lease_id = p_id
         ORDER BY h.token;
    END IF;
    DELETE FROM sqldlm_holders WHERE lease_id = p_id;
    DELETE FROM sqldlm_waiters WHERE lease_id = p_id;
    DELETE FROM sqldlm_pending WHERE lease_id = p_id;
    DELETE FROM sqldlm_leases WHERE id = p_id;
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_reap(IN p_limit INT, IN p_idle_us BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_now DATETIME(6);
    DECLARE v_cutoff DATETIME(6);
    DECLARE v_id BIGINT;
    DECLARE v_request BIGINT;
    DECLARE v_name VARBINARY(255);
    DECLARE v_token BIGINT;
    DECLARE v_done BOOLEAN DEFAULT FALSE;
    DECLARE v_ok BOOLEAN;
    DECLARE v_n INT;
    DECLARE v_locked INT;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE v_retention BIGINT;
    DECLARE v_leases INT DEFAULT 0;
    DECLARE v_holds INT DEFAULT 0;
    DECLARE v_waiters INT DEFAULT 0;
    DECLARE v_idle INT DEFAULT 0;
    DECLARE v_pruned INT DEFAULT 0;
    DECLARE dead CURSOR FOR
        SELECT id FROM sqldlm_leases
         WHERE broken_at IS NOT NULL OR expires_at <= v_now
         ORDER BY expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE idle CURSOR FOR
        SELECT name FROM sqldlm_locks k
         WHERE updated_at < v_cutoff
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = k.name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = k.name)
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE orphans CURSOR FOR
        SELECT lease_id, request_id FROM sqldlm_pending p
         WHERE NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = p.lease_id)
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE stale CURSOR FOR
        SELECT id FROM sqldlm_audit
         WHERE at < v_cutoff
         ORDER BY at, id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
    DECLARE CONTINUE HANDLER FOR NOT FOUND SET v_done = TRUE;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SET v_now = SYSDATE(6);
    SELECT COALESCE(MAX(audit), FALSE), COALESCE(MAX(audit_retention_us), 604800000000)
      INTO v_audit, v_retention FROM sqldlm_settings WHERE id = 1;
    OPEN dead;
    leases: LOOP
        FETCH dead INTO v_id;
        IF v_done THEN
            LEAVE leases;
        END IF;
        CALL sqldlm_lock_holds(NULL, v_id, v_ok);
        IF v_ok THEN
            -- A grant in a caller's transaction that has not ended yet holds
            -- its request's pending row locked.
            SELECT COUNT(*) INTO v_n FROM sqldlm_pending WHERE lease_id = v_id;
            IF v_n > 0 THEN
                SELECT COUNT(*) INTO v_locked FROM sqldlm_pending WHERE lease_id = v_id FOR UPDATE SKIP LOCKED;
                SET v_ok = v_locked = v_n;
            END IF;
        END IF;
        IF v_ok THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders WHERE lease_id = v_id;
            IF v_n > 0 THEN
                SELECT name FROM sqldlm_holders WHERE lease_id = v_id;
                SET v_token = 0;
                holds: LOOP
                    SELECT MIN(token) INTO v_token FROM sqldlm_holders WHERE lease_id = v_id AND token > v_token;
                    IF v_token IS NULL THEN
                        LEAVE holds;
                    END IF;
                    IF v_audit THEN
                        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                        SELECT SYSDATE(6), 'expire', h.name, COALESCE(l.owner, ''), h.lease_id, h.token, h.mode, h.payload, ''
                          FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
                         WHERE h.token = v_token;
                    END IF;
                    DELETE FROM sqldlm_holders WHERE token = v_token;
                    SET v_holds = v_holds + ROW_COUNT();
                END LOOP holds;
            END IF;
            DELETE FROM sqldlm_waiters WHERE lease_id = v_id;
            SET v_waiters = v_waiters + ROW_COUNT();
            DELETE FROM sqldlm_pending WHERE lease_id = v_id;
            DELETE FROM sqldlm_leases WHERE id = v_id;
            SET v_leases = v_leases + ROW_COUNT();
        END IF;
    END LOOP leases;
    CLOSE dead;
    COMMIT;

    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SET v_now = SYSDATE(6);
    SET v_cutoff = v_now - INTERVAL p_idle_us MICROSECOND;
    SET v_done = FALSE;
    OPEN idle;
    idle_rows: LOOP
        FETCH idle INTO v_name;
        IF v_done THEN
            LEAVE idle_rows;
        END IF;
        DELETE FROM sqldlm_locks WHERE name = v_name;
        SET v_idle = v_idle + ROW_COUNT();
    END LOOP idle_rows;
    CLOSE idle;
    SET v_done = FALSE;
    OPEN orphans;
    orphan_rows: LOOP
        FETCH orphans INTO v_id, v_request;
        IF v_done THEN
            LEAVE orphan_rows;
        END IF;
        DELETE FROM sqldlm_pending WHERE lease_id = v_id AND request_id = v_request;
    END LOOP orphan_rows;
    CLOSE orphans;
    -- Audit rows past the retention, oldest first.
    SET v_cutoff = v_now - INTERVAL LEAST(v_retention, 3155760000000000) MICROSECOND;
    SET v_done = FALSE;
    OPEN stale;
    stale_rows: LOOP
        FETCH stale INTO v_id;
        IF v_done THEN
            LEAVE stale_rows;
        END IF;
        DELETE FROM sqldlm_audit WHERE id = v_id;
        SET v_pruned = v_pruned + ROW_COUNT();
    END LOOP stale_rows;
    CLOSE stale;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_leases AS leases, v_holds AS holds, v_waiters AS waiters, v_idle AS idle_locks, v_pruned AS audit_rows;
END
-- +goose StatementEnd

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_fence(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT, IN p_idle_s INT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_status INT DEFAULT 0;
    DECLARE v_n INT;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SELECT COUNT(*) INTO v_n FROM sqldlm_holders
     WHERE token = p_token AND lease_id = p_lease AND name = p_name LOCK IN SHARE MODE;
    IF v_n > 0 THEN
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > SYSDATE(6);
        IF v_n > 0 THEN
            SET v_status = 1;
        ELSE
            SELECT COUNT(*) INTO v_n FROM sqldlm_leases
             WHERE id = p_lease AND broken_at IS NULL AND expires_at > SYSDATE(6) LOCK IN SHARE MODE;
            IF v_n > 0 THEN
                SET v_status = 2;
            END IF;
        END IF;
    END IF;
    IF v_status = 1 AND p_idle_s > 0 THEN
        IF VERSION() LIKE '%MariaDB%' THEN
            SET @sqldlm_fence_sql = CONCAT(
                'SET SESSION idle_transaction_timeout = IF(@@session.idle_transaction_timeout BETWEEN 1 AND ',
                p_idle_s, ', @@session.idle_transaction_timeout, ', p_idle_s, ')');
            PREPARE sqldlm_fence_stmt FROM @sqldlm_fence_sql;
            EXECUTE sqldlm_fence_stmt;
            DEALLOCATE PREPARE sqldlm_fence_stmt;
            SET @sqldlm_fence_sql = NULL;
        ELSE
            SET SESSION wait_timeout = LEAST(@@session.wait_timeout, p_idle_s);
        END IF;
    END IF;
    SET time_zone = saved_tz;
    SELECT v_status AS status;
END
-- +goose StatementEnd

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_release_tx(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_n INT;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    CALL sqldlm_release_hold(p_name, p_lease, p_token, v_n);
    SET time_zone = saved_tz;
    SELECT v_n AS released;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;
