-- sqldlm schema version 6 for MySQL 8 and MariaDB 10.6+: Fence holds on a
-- multi-writer Galera cluster, and of two holders upgrading at once exactly
-- one is refused (HA-2026-12 G3, G6).
--
-- sqldlm_fence, on a server whose session replicates through Galera
-- (@@session.wsrep_on), pins the hold with a write: it increments the
-- hold's new column fences (nothing reads it; it counts the fences of the
-- hold, which only a write can make Galera see). A shared lock is local to
-- one node and is not part of the transaction's write set: a takeover
-- certified on another node was granted while the fence was open, and
-- applying it on the holder's node aborted the fenced transaction, which
-- Galera replays when it had already been certified, so that the fenced
-- write committed after the other client's grant. A write to the hold is a
-- certification key that every takeover, release, reap or upgrade of it
-- also writes (they delete the row): of the fenced transaction and any of
-- them, on any nodes, the one certified second fails (1213 at its COMMIT;
-- the fenced transaction's COMMIT when the other was certified first).
-- On one node the write's exclusive lock stops them exactly as the shared
-- lock did (a takeover skips a locked hold; a release waits); it also
-- makes a second transaction fencing the same hold wait for the first. The
-- write touches only the hold's row, as the shared lock did: nothing else
-- is read or locked in the caller's transaction at any isolation level.
-- Elsewhere (standalone MariaDB, MySQL) sqldlm_fence is unchanged: a
-- shared lock, so several transactions may fence one hold at once, as on
-- PostgreSQL.
--
-- sqldlm_acquire: the first enqueue of a blocked upgrade writes the name's
-- sqldlm_locks row (updated_at; created if missing), then checks that no
-- other live upgrade waits for the name, and inserts its waiter row only
-- if none does; otherwise it answers status 5 (upgrade conflict) having
-- changed nothing. Before, the check was sqldlm_acquire_decide's alone,
-- in a transaction that had ended: two upgraders could both pass it, both
-- queue, and at their next attempt each refuse on seeing the other's row,
-- so that both were refused (on standalone MariaDB too, less often). The
-- row's lock serializes those steps on one server, and on Galera two of
-- them on two nodes conflict in certification (1213, retried by the
-- client). sqldlm_acquire_decide is unchanged; so is every other path.
--
-- Down drops the column and restores version 5's procedures as 00005
-- defines them.

-- +goose Up
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

ALTER TABLE sqldlm_holders ADD COLUMN fences BIGINT NOT NULL DEFAULT 0;

DROP PROCEDURE IF EXISTS sqldlm_fence;
DROP PROCEDURE IF EXISTS sqldlm_acquire;

-- sqldlm_fence pins hold p_token of lease p_lease on p_name in the caller's
-- transaction, so that no takeover, release or reap of it can commit before
-- the transaction ends: through Galera by a write to the hold (fences + 1,
-- a certification key), elsewhere by a shared lock on it (a locking read).
-- Either reads the latest version of the hold, whatever the transaction's
-- snapshot, and touches nothing else. It returns one row, pinned: 1, or 0
-- if the hold does not exist; the caller then checks the lease with
-- sqldlm_lease_live outside the transaction. When pinned, it bounds the
-- transaction's idle time as version 5 did (MariaDB
-- idle_transaction_timeout, MySQL wait_timeout, left on the connection).
-- Both server variables are read with dynamic SQL, because MySQL rejects a
-- procedure that names an unknown system variable; the statement text
-- holds only numbers.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_fence(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT, IN p_idle_s INT)
BEGIN
    DECLARE v_n INT;
    SET @sqldlm_fence_wsrep = 0;
    IF VERSION() LIKE '%MariaDB%' THEN
        BEGIN
            -- A MariaDB built without wsrep has no such variable.
            DECLARE EXIT HANDLER FOR 1193 SET @sqldlm_fence_wsrep = 0;
            PREPARE sqldlm_fence_stmt FROM 'SET @sqldlm_fence_wsrep = @@session.wsrep_on';
            EXECUTE sqldlm_fence_stmt;
            DEALLOCATE PREPARE sqldlm_fence_stmt;
        END;
    END IF;
    IF @sqldlm_fence_wsrep THEN
        UPDATE sqldlm_holders SET fences = fences + 1
         WHERE token = p_token AND lease_id = p_lease AND name = p_name;
        SET v_n = ROW_COUNT();
    ELSE
        SELECT COUNT(*) INTO v_n FROM sqldlm_holders
         WHERE token = p_token AND lease_id = p_lease AND name = p_name LOCK IN SHARE MODE;
    END IF;
    SET @sqldlm_fence_wsrep = NULL;
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

-- sqldlm_acquire: as in version 5, but an upgrade's first enqueue is one
-- step with the check that no other upgrade waits (see above).
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
        --
        -- Except for an upgrade's first enqueue: it queues only if no other
        -- live upgrade waits for the name, and that check and the insert of
        -- its waiter row are one step per name. The name's row is written
        -- first (created if missing), which holds it until the commit and,
        -- on Galera, makes two such steps on two nodes conflict in
        -- certification (1213, retried by the client). Otherwise two
        -- upgraders could both pass sqldlm_acquire_decide's check, both
        -- queue, and each then refuse on seeing the other's row. The wait
        -- for the name's row is bounded like every other here (1205, retried
        -- by the client).
        IF NOT v_bounded THEN
            SET SESSION innodb_lock_wait_timeout = LEAST(saved_lwt, 1);
            SET v_bounded = TRUE;
        END IF;
        SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
        START TRANSACTION;
        -- An upgrade's first enqueue: the name's row written first (created
        -- if missing), then no other live upgrade waiter, then the insert.
        IF p_upgrade <> 0 THEN
            SELECT COUNT(*) INTO v_row FROM sqldlm_waiters FORCE INDEX (sqldlm_waiters_lease)
             WHERE lease_id = p_lease AND request_id = p_request;
            IF v_row = 0 THEN
                INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, SYSDATE(6))
                    ON DUPLICATE KEY UPDATE updated_at = SYSDATE(6);
                SELECT COUNT(*) INTO v_row
                  FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
                 WHERE w.name = p_name AND w.upgrade_token IS NOT NULL AND w.upgrade_token <> p_upgrade
                   AND l.broken_at IS NULL AND l.expires_at > SYSDATE(6);
                IF v_row > 0 THEN
                    SET v_status = 5, v_owner = NULL, v_mode = NULL, v_expires_us = NULL, v_ahead = 0;
                END IF;
            END IF;
        END IF;
        IF v_status = 5 THEN
            SET v_live = FALSE;
        ELSE
            SELECT COUNT(*) > 0 INTO v_live FROM sqldlm_leases
             WHERE id = p_lease AND broken_at IS NULL AND expires_at > SYSDATE(6) LOCK IN SHARE MODE;
        END IF;
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
        ELSEIF v_status = 5 THEN
            ROLLBACK;
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

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;

-- +goose Down
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DROP PROCEDURE sqldlm_fence;
DROP PROCEDURE sqldlm_acquire;
ALTER TABLE sqldlm_holders DROP COLUMN fences;

-- Version 5's procedures, as 00005 defines them.

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

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;
