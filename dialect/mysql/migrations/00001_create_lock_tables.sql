-- sqldlm schema version 1 for MySQL 8 and MariaDB 10.6+.
--
-- The tables are created in the current database. Names and owners are
-- VARBINARY so that they compare byte by byte: with MariaDB's PAD SPACE
-- collations 'x' = 'x ', and with _ci collations 'a' = 'A', which would merge
-- distinct locks. Times are DATETIME(6) in UTC, written only by the
-- procedures, which read the clock with SYSDATE(6) under time_zone '+00:00'
-- (NOW() is the statement's start and follows SET timestamp; SYSDATE is not).
--
-- Fencing tokens come from the AUTO_INCREMENT of sqldlm_holders: every grant
-- (and every upgrade) inserts a holder row and so draws a new value. InnoDB
-- persists the counter across restarts (MySQL 8, MariaDB 10.2.4+), so a
-- name's tokens strictly increase even after its rows are deleted.
--
-- Every lock operation is one CALL of a procedure below, so that it costs one
-- round trip and one commit. The procedures:
--
--   - return times and durations as BIGINT microseconds (times since the Unix
--     epoch, computed under time_zone '+00:00'), so neither the session's
--     time_zone nor the DSN's parseTime or loc matter;
--   - decide expiry with SYSDATE(6) only: a lease is live iff broken_at IS
--     NULL AND expires_at > SYSDATE(6) (NOW() and CURRENT_TIMESTAMP are the
--     statement's start and follow SET timestamp; a server started with
--     --sysdate-is-now makes SYSDATE an alias of NOW and is not supported);
--   - run their transactions at READ COMMITTED (SET TRANSACTION applies to
--     the next transaction only), with START TRANSACTION ... COMMIT even when
--     the session has autocommit off;
--   - ROLLBACK in an EXIT HANDLER and RESIGNAL, because a lock wait timeout
--     (1205) rolls back only the statement and would otherwise let COMMIT
--     persist half a transaction; 1205 and deadlocks (1213) reach the Go
--     caller, which retries;
--   - restore the session's time_zone before they return, in every path;
--   - in Acquire and Reap, never wait for a row lock that may be held for
--     long (a fenced transaction's shared lock on its hold, a DeleteLease
--     waiting for one): other leases and their holds are probed with FOR
--     UPDATE SKIP LOCKED, and a locked one makes the grant Blocked (it polls
--     again) or leaves the lease to a later reap. go-sql-driver does not
--     cancel a statement whose context ends, so a grant left waiting would
--     commit later, unseen. Release, Downgrade, Abandon and DeleteLease do
--     wait for a fenced hold: the fence's promise is that the hold outlives
--     the fenced transaction.
--
-- Stored routines run their statements with the sql_mode in force when they
-- were created, whatever the caller's; the migration fixes it for its own
-- session (and puts the session's back at the end) so that the routines always
-- run in strict mode. Arguments, though, are assigned under the caller's
-- sql_mode and are silently truncated when it is not strict: so name and owner
-- parameters are wider (1024) than their columns (255), and payload
-- parameters (4096) than theirs (1024). An overlong name, owner or payload
-- then fails on INSERT or UPDATE, in strict mode, and can never be truncated
-- into a match with a stored one (or stored cut short).
--
-- Binary logging: READ COMMITTED needs binlog_format ROW or MIXED (the
-- defaults); SYSDATE is then logged by value.
--
-- Procedure bodies contain semicolons: with the mysql command-line client,
-- wrap each CREATE PROCEDURE in DELIMITER statements.

-- +goose Up
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

CREATE TABLE sqldlm_leases (
    id         BIGINT         NOT NULL PRIMARY KEY,   -- random, chosen by the client
    owner      VARBINARY(255) NOT NULL,
    ttl_us     BIGINT         NOT NULL,               -- renewal extends expires_at by this
    created_at DATETIME(6)    NOT NULL,
    renewed_at DATETIME(6)    NOT NULL,
    expires_at DATETIME(6)    NOT NULL,
    broken_at  DATETIME(6)    NULL,                  -- set when a takeover or an operator declared the lease dead
    KEY sqldlm_leases_expires_at (expires_at),
    CONSTRAINT sqldlm_leases_owner CHECK (LENGTH(owner) BETWEEN 1 AND 255),
    CONSTRAINT sqldlm_leases_ttl CHECK (ttl_us > 0)
) ENGINE=InnoDB;

-- One row per name that is held, awaited or was recently used: the row every
-- grant of the name locks, so grants of one name serialize on it.
CREATE TABLE sqldlm_locks (
    name       VARBINARY(255) NOT NULL PRIMARY KEY,
    token      BIGINT         NOT NULL DEFAULT 0,     -- highest token granted for the name
    updated_at DATETIME(6)    NOT NULL,               -- last grant; idle rows are collected after a while
    KEY sqldlm_locks_updated_at (updated_at),
    CONSTRAINT sqldlm_locks_name CHECK (LENGTH(name) BETWEEN 1 AND 255)
) ENGINE=InnoDB;

CREATE TABLE sqldlm_holders (
    token       BIGINT         NOT NULL AUTO_INCREMENT PRIMARY KEY, -- the fencing token
    name        VARBINARY(255) NOT NULL,
    lease_id    BIGINT         NOT NULL,
    request_id  BIGINT         NOT NULL,              -- the client's id of the acquire, for idempotent retries
    mode        CHAR(1)        CHARACTER SET ascii NOT NULL,
    acquired_at DATETIME(6)    NOT NULL,
    payload     VARBINARY(1024) NOT NULL DEFAULT '',  -- what the holder is doing (UTF-8, set by the client)
    KEY sqldlm_holders_name (name),
    KEY sqldlm_holders_lease (lease_id, request_id),
    CONSTRAINT sqldlm_holders_mode CHECK (mode IN ('S', 'X'))
) ENGINE=InnoDB;

CREATE TABLE sqldlm_waiters (
    id            BIGINT         NOT NULL AUTO_INCREMENT PRIMARY KEY, -- arrival order
    name          VARBINARY(255) NOT NULL,
    lease_id      BIGINT         NOT NULL,
    request_id    BIGINT         NOT NULL,
    mode          CHAR(1)        CHARACTER SET ascii NOT NULL,
    upgrade_token BIGINT         NULL,                -- the shared hold this waiter upgrades, if any
    since         DATETIME(6)    NOT NULL,
    KEY sqldlm_waiters_name (name, id),
    UNIQUE KEY sqldlm_waiters_lease (lease_id, request_id),
    CONSTRAINT sqldlm_waiters_mode CHECK (mode IN ('S', 'X'))
) ENGINE=InnoDB;

-- sqldlm_now returns the server's clock as microseconds since the Unix epoch.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_now()
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', SYSDATE(6)) AS now_us;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- sqldlm_create_lease inserts a live lease expiring p_ttl_us after the
-- server's clock.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_create_lease(IN p_id BIGINT, IN p_owner VARBINARY(1024), IN p_ttl_us BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_now DATETIME(6);
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
    INSERT INTO sqldlm_leases (id, owner, ttl_us, created_at, renewed_at, expires_at)
    VALUES (p_id, p_owner, p_ttl_us, v_now, v_now, v_now + INTERVAL p_ttl_us MICROSECOND);
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- sqldlm_renew_lease extends a live lease to the server's clock plus its TTL
-- and returns 1, or changes nothing and returns 0 if the lease is not live.
-- The UPDATE waits for the row lock and then evaluates its WHERE clause, with
-- a fresh SYSDATE(6), on the latest committed version of the row: a lease that
-- a takeover broke, or that expired while the statement waited, stays dead.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_renew_lease(IN p_id BIGINT)
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
    UPDATE sqldlm_leases
       SET renewed_at = SYSDATE(6), expires_at = SYSDATE(6) + INTERVAL ttl_us MICROSECOND
     WHERE id = p_id AND broken_at IS NULL AND expires_at > SYSDATE(6);
    SET v_n = ROW_COUNT();
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n AS renewed;
END
-- +goose StatementEnd

-- sqldlm_delete_lease deletes a lease with its holds and waiters. Its one
-- result set is the names of the deleted holds (a name once per hold). The
-- lease row is locked first, as every operation that locks a lease and its
-- holds does, so no hold of the lease can be granted meanwhile.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_delete_lease(IN p_id BIGINT)
BEGIN
    DECLARE v_n INT;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = p_id FOR UPDATE;
    SELECT name FROM sqldlm_holders WHERE lease_id = p_id FOR UPDATE;
    DELETE FROM sqldlm_holders WHERE lease_id = p_id;
    DELETE FROM sqldlm_waiters WHERE lease_id = p_id;
    DELETE FROM sqldlm_leases WHERE id = p_id;
    COMMIT;
END
-- +goose StatementEnd

-- sqldlm_acquire_check finds, by consistent reads at p_now, what keeps a
-- request from being granted: the conflicting hold that blocks longest
-- (o_mode is NULL when there is none), and the number of live waiters that
-- go first (none for an upgrade; otherwise any pending upgrade, and earlier
-- waiters whose mode conflicts). A conflicting hold blocks while its lease is
-- live (o_expires_us: until the lease expires) and, under the lock delay
-- p_delay_us, while its lease has been dead for less than that (o_expires_us:
-- the time left of the delay). A lease is dead since the earlier of its
-- expires_at and broken_at; a hold whose lease row is missing never blocks.
-- A helper of sqldlm_acquire, which passes a delay clamped to [0, 100 years].
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

-- sqldlm_lock_holds locks the holds of lease p_lease (only those of name
-- p_name unless it is NULL) one by one through the primary key with FOR
-- UPDATE SKIP LOCKED. o_ok is FALSE, and it stops, at the first hold that
-- another transaction has locked: a fenced transaction pins its hold with a
-- shared lock, and whoever would delete the hold must not wait for it. A
-- helper of sqldlm_acquire and sqldlm_reap, which hold the lease row locked,
-- so no hold of the lease can be added meanwhile.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_lock_holds(IN p_name VARBINARY(1024), IN p_lease BIGINT, OUT o_ok BOOLEAN)
BEGIN
    DECLARE v_token BIGINT DEFAULT 0;
    DECLARE v_n INT;
    SET o_ok = TRUE;
    holds: LOOP
        SELECT MIN(token) INTO v_token FROM sqldlm_holders
         WHERE lease_id = p_lease AND (p_name IS NULL OR name = p_name) AND token > v_token;
        IF v_token IS NULL THEN
            LEAVE holds;
        END IF;
        SELECT COUNT(*) INTO v_n FROM sqldlm_holders WHERE token = v_token FOR UPDATE SKIP LOCKED;
        IF v_n = 0 THEN
            -- Skipped: locked by another transaction, unless it was deleted
            -- since the read above.
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders WHERE token = v_token;
            IF v_n > 0 THEN
                SET o_ok = FALSE;
                LEAVE holds;
            END IF;
        END IF;
    END LOOP holds;
END
-- +goose StatementEnd

-- sqldlm_acquire grants a hold of p_name to request (p_lease, p_request) in
-- mode p_mode ('S' or 'X'), or upgrades the caller's shared hold p_upgrade (0
-- for none) to an exclusive one. The new hold stores p_payload; an upgrade
-- with an empty p_payload keeps the shared hold's. p_delay_us is the lock
-- delay: a conflicting hold of a dead lease is taken over only once the lease
-- has been dead (since the earlier of its expires_at and broken_at) for that
-- long; until then it blocks like a live one, reported with the time left of
-- the delay as expires_in_us. Its last result set is one row: status (1
-- granted, 2 blocked, 3 lease lost, 4 not held, 5 upgrade conflict), token
-- (when granted), when blocked owner, mode and expires_in_us of the
-- conflicting hold (NULL when only waiters are ahead) and waiters_ahead, and
-- took_over: how many holds of dead leases this call's grant deleted (0
-- unless this call committed a grant).
--
-- Before it, a takeover returns one result set per dead lease whose
-- conflicting holds it is about to delete (owner, lease_id, token, mode,
-- expired_at_us: the lease's expires_at, broken: whether the lease had been
-- broken before this grant, payload; a hold whose lease row is missing has
-- owner '', expired_at_us 0 and broken 0). The two kinds of result set both
-- have seven columns: the first column's name (owner or status) tells them
-- apart. They are sent before the COMMIT and count
-- only if the last row has status 1 and a took_over equal to their number of
-- rows: a later lease that turns out to be locked rolls the takeover back.
-- The last row is sent after the COMMIT, so an error the COMMIT raises takes
-- its place.
--
-- Phase 1 decides with consistent reads and takes no row lock: a blocked
-- request (the common case while waiting) only inserts its waiter row when
-- p_enqueue. Phase 2 runs only when nothing seemed to block, and locks in
-- this order: the name's sqldlm_locks row (every grant of the name
-- serializes on it), the requesting lease (shared, so it cannot be broken or
-- reaped meanwhile; the clock is read again after this lock), then each dead
-- lease whose holds conflict, in id order, and their holds. It re-checks
-- everything after its locks. Waiting for the sqldlm_locks row and the own
-- lease row is short (their holders never wait long); a dead lease or hold
-- that another transaction has locked is not waited for: the request is
-- Blocked and polls again.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_acquire(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_enqueue BOOLEAN, IN p_upgrade BIGINT,
    IN p_payload VARBINARY(4096), IN p_delay_us BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_status INT DEFAULT 0;
    DECLARE v_token BIGINT DEFAULT NULL;
    DECLARE v_owner VARBINARY(255) DEFAULT NULL;
    DECLARE v_mode CHAR(1) CHARACTER SET ascii DEFAULT NULL;
    DECLARE v_expires_us BIGINT DEFAULT NULL;
    DECLARE v_ahead INT DEFAULT 0;
    DECLARE v_now DATETIME(6);
    DECLARE v_n INT;
    DECLARE v_locked INT;
    DECLARE v_ok BOOLEAN;
    DECLARE v_dead BIGINT DEFAULT NULL;
    DECLARE v_last BIGINT DEFAULT NULL;
    DECLARE v_taken INT DEFAULT 0;
    DECLARE v_granted BOOLEAN DEFAULT FALSE;
    DECLARE v_payload VARBINARY(1024) DEFAULT NULL;
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;

    SET time_zone = '+00:00';
    SET p_upgrade = COALESCE(p_upgrade, 0);
    SET p_payload = COALESCE(p_payload, '');
    -- At most 100 years, so that the date arithmetic stays within DATETIME.
    SET p_delay_us = LEAST(GREATEST(COALESCE(p_delay_us, 0), 0), 3155760000000000);
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    decide: BEGIN
        -- Phase 1: consistent reads only.
        SET v_now = SYSDATE(6);
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now;
        IF v_n = 0 THEN
            SET v_status = 3;
            LEAVE decide;
        END IF;
        -- A repeated request returns the hold it already obtained.
        SELECT MAX(token) INTO v_token FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
        IF v_token IS NOT NULL THEN
            SET v_status = 1;
            LEAVE decide;
        END IF;
        IF p_upgrade <> 0 THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders
             WHERE token = p_upgrade AND lease_id = p_lease AND name = p_name;
            IF v_n = 0 THEN
                SET v_status = 4;
                LEAVE decide;
            END IF;
            SELECT COUNT(*) INTO v_n
              FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
             WHERE w.name = p_name AND w.upgrade_token IS NOT NULL AND w.upgrade_token <> p_upgrade
               AND l.broken_at IS NULL AND l.expires_at > v_now;
            IF v_n > 0 THEN
                SET v_status = 5;
                LEAVE decide;
            END IF;
        END IF;
        CALL sqldlm_acquire_check(p_name, p_lease, p_request, p_mode, p_upgrade, v_now, p_delay_us,
                                  v_owner, v_mode, v_expires_us, v_ahead);
        IF v_mode IS NOT NULL OR v_ahead > 0 THEN
            SET v_status = 2;
            LEAVE decide;
        END IF;

        -- Phase 2. (1) The name's row, created if missing: ON DUPLICATE KEY
        -- takes the row's exclusive lock at once (INSERT IGNORE would take a
        -- shared one, and two sessions upgrading theirs deadlock).
        SELECT COUNT(*) INTO v_n FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
        IF v_n = 0 THEN
            INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, SYSDATE(6))
                ON DUPLICATE KEY UPDATE token = token;
        END IF;
        -- (2) The requesting lease, shared, then the clock.
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = p_lease LOCK IN SHARE MODE;
        SET v_now = SYSDATE(6);
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now;
        IF v_n = 0 THEN
            SET v_status = 3;
            LEAVE decide;
        END IF;
        -- A concurrent attempt of this same request may have committed.
        SELECT MAX(token) INTO v_token FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
        IF v_token IS NOT NULL THEN
            SET v_status = 1;
            LEAVE decide;
        END IF;
        IF p_upgrade <> 0 THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders
             WHERE token = p_upgrade AND lease_id = p_lease AND name = p_name;
            IF v_n = 0 THEN
                SET v_status = 4;
                LEAVE decide;
            END IF;
            SELECT COUNT(*), MAX(payload) INTO v_n, v_payload
              FROM sqldlm_holders WHERE token = p_upgrade FOR UPDATE SKIP LOCKED;
            IF v_n = 0 THEN
                -- The shared hold is pinned by a fenced transaction (of the
                -- holder's own), or briefly locked by a Downgrade or
                -- SetPayload: the upgrade waits for it to end.
                SELECT owner, TIMESTAMPDIFF(MICROSECOND, v_now, expires_at), 'S'
                  INTO v_owner, v_expires_us, v_mode
                  FROM sqldlm_leases WHERE id = p_lease;
                SET v_status = 2;
                LEAVE decide;
            END IF;
        END IF;
        -- (3) The holds again, by the clock read after the locks.
        CALL sqldlm_acquire_check(p_name, p_lease, p_request, p_mode, p_upgrade, v_now, p_delay_us,
                                  v_owner, v_mode, v_expires_us, v_ahead);
        IF v_mode IS NOT NULL OR v_ahead > 0 THEN
            SET v_status = 2;
            LEAVE decide;
        END IF;
        -- Take over the conflicting holds of dead leases, one lease at a
        -- time in id order: lock the lease row (without waiting), re-check
        -- with SYSDATE(6) that it has been dead for the lock delay (a live
        -- lease is dead since later than the cutoff, so one condition covers
        -- both), lock its holds of the name (without waiting),
        -- return its conflicting holds (as they were before this grant),
        -- mark it broken so that no late renewal revives it, delete its holds.
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
            SET v_ok = FALSE;
            SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = v_dead;
            SELECT COUNT(*) INTO v_locked FROM sqldlm_leases WHERE id = v_dead FOR UPDATE SKIP LOCKED;
            IF v_locked = v_n THEN
                SELECT COUNT(*) INTO v_n FROM sqldlm_leases
                 WHERE id = v_dead
                   AND LEAST(expires_at, COALESCE(broken_at, expires_at)) > SYSDATE(6) - INTERVAL p_delay_us MICROSECOND;
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
                  INTO v_owner, v_mode, v_expires_us
                  FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
                 WHERE h.name = p_name AND h.lease_id = v_dead AND (p_mode = 'X' OR h.mode = 'X')
                 ORDER BY h.mode DESC
                 LIMIT 1;
                SET v_status = 2;
                LEAVE decide;
            END IF;
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders
             WHERE name = p_name AND lease_id = v_dead AND token <> p_upgrade AND (p_mode = 'X' OR mode = 'X');
            IF v_n > 0 THEN
                SELECT COALESCE(l.owner, '') AS owner, h.lease_id, h.token, h.mode,
                       COALESCE(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', l.expires_at), 0) AS expired_at_us,
                       COALESCE(l.broken_at IS NOT NULL, 0) AS broken,
                       h.payload
                  FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
                 WHERE h.name = p_name AND h.lease_id = v_dead AND h.token <> p_upgrade
                   AND (p_mode = 'X' OR h.mode = 'X')
                 ORDER BY h.token;
                SET v_taken = v_taken + v_n;
            END IF;
            UPDATE sqldlm_leases SET broken_at = SYSDATE(6) WHERE id = v_dead AND broken_at IS NULL;
            DELETE FROM sqldlm_holders WHERE name = p_name AND lease_id = v_dead;
        END LOOP takeover;

        -- Grant: the hold's AUTO_INCREMENT is the fencing token.
        IF p_upgrade <> 0 AND p_payload = '' THEN
            SET p_payload = COALESCE(v_payload, '');
        END IF;
        INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
        VALUES (p_name, p_lease, p_request, p_mode, SYSDATE(6), p_payload);
        SET v_token = LAST_INSERT_ID();
        IF p_upgrade <> 0 THEN
            DELETE FROM sqldlm_holders WHERE token = p_upgrade;
        END IF;
        UPDATE sqldlm_locks SET token = v_token, updated_at = SYSDATE(6) WHERE name = p_name;
        DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
        COMMIT;
        SET v_status = 1, v_granted = TRUE;
    END decide;
    IF NOT v_granted THEN
        -- Any takeover above is rolled back below.
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
    SELECT v_status AS status, v_token AS token, v_owner AS owner, v_mode AS mode,
           v_expires_us AS expires_in_us, v_ahead AS waiters_ahead, v_taken AS took_over;
END
-- +goose StatementEnd

-- sqldlm_abandon withdraws request (p_lease, p_request): it deletes its hold,
-- if it obtained one, and its waiter row. Its one result set is the names of
-- the deleted holds.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_abandon(IN p_lease BIGINT, IN p_request BIGINT)
BEGIN
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT name FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request FOR UPDATE;
    DELETE FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request;
    DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
    COMMIT;
END
-- +goose StatementEnd

-- sqldlm_release deletes a hold and returns 1, or 0 if it did not exist.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_release(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT)
BEGIN
    DECLARE v_n INT;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name;
    SET v_n = ROW_COUNT();
    COMMIT;
    SELECT v_n AS released;
END
-- +goose StatementEnd

-- sqldlm_downgrade makes a hold of a live lease shared, keeping its token,
-- and returns 1, or 0 if the hold does not exist or its lease is not live.
-- The hold is locked first (a takeover cannot delete it meanwhile), then the
-- lease read with a fresh snapshot, without locking it.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_downgrade(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT)
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
    SELECT COUNT(*) INTO v_n FROM sqldlm_holders
     WHERE token = p_token AND lease_id = p_lease AND name = p_name FOR UPDATE;
    IF v_n > 0 THEN
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > SYSDATE(6);
        IF v_n > 0 THEN
            UPDATE sqldlm_holders SET mode = 'S' WHERE token = p_token;
        END IF;
    END IF;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n > 0 AS downgraded;
END
-- +goose StatementEnd

-- sqldlm_set_payload replaces the payload of a hold of a live lease and
-- returns 1, or 0 if the hold does not exist or its lease is not live. Like
-- sqldlm_downgrade, it locks the hold first, then reads the lease with a
-- fresh snapshot, without locking it. A payload over 1024 bytes is an error.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_set_payload(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT,
                                    IN p_payload VARBINARY(4096))
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
    SELECT COUNT(*) INTO v_n FROM sqldlm_holders
     WHERE token = p_token AND lease_id = p_lease AND name = p_name FOR UPDATE;
    IF v_n > 0 THEN
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > SYSDATE(6);
        IF v_n > 0 THEN
            UPDATE sqldlm_holders SET payload = COALESCE(p_payload, '') WHERE token = p_token;
        END IF;
    END IF;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n > 0 AS updated;
END
-- +goose StatementEnd

-- sqldlm_fence runs inside the caller's transaction: no START TRANSACTION, no
-- COMMIT, no ROLLBACK. It locks the hold with a shared lock, which a takeover
-- (FOR UPDATE SKIP LOCKED) and a release (DELETE) cannot pass until the
-- caller's transaction ends, and checks the lease by SYSDATE(6) with a
-- non-locking read: a shared lock on the lease row would hold off the
-- holder's own renewals for the whole transaction. It returns status 1 (held),
-- 0 (the hold is gone or its lease is not live) or 2 (the transaction's
-- snapshot is older than the lease's latest renewal: at REPEATABLE READ a
-- non-locking read sees the snapshot of the transaction's first read; the
-- latest version, read with a locking read, is live; retry the transaction).
--
-- When held, it bounds how long the transaction may then sit idle, so a
-- paused holder cannot pin the hold forever: on MariaDB with the session's
-- idle_transaction_timeout, on MySQL (which has no such variable) with the
-- session's wait_timeout, which ends an idle connection in or out of a
-- transaction. The value is p_idle_s seconds, or the session's own value if
-- it is already lower. Either setting stays on that pooled connection after
-- the transaction: MariaDB then ends any of its transactions idle for longer,
-- and MySQL closes the connection once it sits idle in the pool for longer
-- (go-sql-driver notices and opens another). The variable is picked by
-- server with dynamic SQL, because MySQL rejects a procedure that names an
-- unknown system variable; the statement text holds only numbers.
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

-- sqldlm_reap deletes up to p_limit dead leases (expired or broken) with
-- their holds and waiters, then, in a second transaction, up to p_limit
-- sqldlm_locks rows with no holds and no waiters whose last grant is older
-- than p_idle_us. Dead leases are picked with FOR UPDATE SKIP LOCKED, and a
-- lease one of whose holds another transaction has locked (a fence) is left
-- for a later pass. It returns one result set of names per reaped lease that
-- had holds (a name once per hold), then one row: leases, holds, waiters,
-- idle_locks.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_reap(IN p_limit INT, IN p_idle_us BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_now DATETIME(6);
    DECLARE v_id BIGINT;
    DECLARE v_done BOOLEAN DEFAULT FALSE;
    DECLARE v_ok BOOLEAN;
    DECLARE v_n INT;
    DECLARE v_leases INT DEFAULT 0;
    DECLARE v_holds INT DEFAULT 0;
    DECLARE v_waiters INT DEFAULT 0;
    DECLARE v_idle INT DEFAULT 0;
    DECLARE dead CURSOR FOR
        SELECT id FROM sqldlm_leases
         WHERE broken_at IS NOT NULL OR expires_at <= v_now
         ORDER BY expires_at
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
    OPEN dead;
    leases: LOOP
        FETCH dead INTO v_id;
        IF v_done THEN
            LEAVE leases;
        END IF;
        CALL sqldlm_lock_holds(NULL, v_id, v_ok);
        IF v_ok THEN
            SELECT COUNT(*) INTO v_n FROM sqldlm_holders WHERE lease_id = v_id;
            IF v_n > 0 THEN
                SELECT name FROM sqldlm_holders WHERE lease_id = v_id;
                DELETE FROM sqldlm_holders WHERE lease_id = v_id;
                SET v_holds = v_holds + ROW_COUNT();
            END IF;
            DELETE FROM sqldlm_waiters WHERE lease_id = v_id;
            SET v_waiters = v_waiters + ROW_COUNT();
            DELETE FROM sqldlm_leases WHERE id = v_id;
            SET v_leases = v_leases + ROW_COUNT();
        END IF;
    END LOOP leases;
    CLOSE dead;
    COMMIT;

    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SET v_now = SYSDATE(6);
    DELETE FROM sqldlm_locks
     WHERE updated_at < v_now - INTERVAL p_idle_us MICROSECOND
       AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = sqldlm_locks.name)
       AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = sqldlm_locks.name)
     LIMIT p_limit;
    SET v_idle = ROW_COUNT();
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_leases AS leases, v_holds AS holds, v_waiters AS waiters, v_idle AS idle_locks;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;

-- +goose Down
DROP PROCEDURE sqldlm_reap;
DROP PROCEDURE sqldlm_fence;
DROP PROCEDURE sqldlm_set_payload;
DROP PROCEDURE sqldlm_downgrade;
DROP PROCEDURE sqldlm_release;
DROP PROCEDURE sqldlm_abandon;
DROP PROCEDURE sqldlm_acquire;
DROP PROCEDURE sqldlm_lock_holds;
DROP PROCEDURE sqldlm_acquire_check;
DROP PROCEDURE sqldlm_delete_lease;
DROP PROCEDURE sqldlm_renew_lease;
DROP PROCEDURE sqldlm_create_lease;
DROP PROCEDURE sqldlm_now;
DROP TABLE sqldlm_waiters;
DROP TABLE sqldlm_holders;
DROP TABLE sqldlm_locks;
DROP TABLE sqldlm_leases;
