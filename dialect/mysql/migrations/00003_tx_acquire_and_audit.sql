-- sqldlm schema version 3 for MySQL 8 and MariaDB 10.6+: the audit log and
-- its setting, and acquires made in the caller's transaction.
--
-- sqldlm_settings has exactly one row (id = 1). While audit is on, every
-- procedure that grants, upgrades, downgrades or deletes a hold writes one
-- row per hold into sqldlm_audit, in the same transaction as the change and
-- with the server's clock (SYSDATE(6) under time_zone '+00:00'); each reads
-- the setting once per call, and only on its way to a change. Events:
--   grant      a new hold (sqldlm_acquire, sqldlm_acquire_tx): the new hold;
--   upgrade    the exclusive hold an upgrade created: detail 'from token N'
--              (N the upgraded shared hold's token);
--   downgrade  the hold after sqldlm_downgrade (mode 'S');
--   release    a hold deleted by its own client: detail '' (sqldlm_release,
--              sqldlm_release_tx), 'abandoned' (sqldlm_abandon), 'lease
--              closed' (sqldlm_delete_lease);
--   takeover   a hold of a dead lease that a grant deleted: the dead hold,
--              detail 'by <owner of the new hold>'; written before the
--              grant's (or upgrade's) row;
--   expire     a hold of a dead lease that sqldlm_reap deleted;
--   break      a hold of a lease sqldlm_break marked broken: detail '' for
--              holds of the broken name, 'with <broken name>' for the
--              lease's holds of other names.
-- owner is the lease's owner, '' when the lease row is already gone. Like
-- the lock tables, the audit table stores names, owners, payloads and
-- details as VARBINARY (byte-wise) and times as DATETIME(6) in UTC.
-- sqldlm_reap deletes audit rows older than audit_retention_us whether or
-- not audit is on.
--
-- sqldlm_pending holds one row per acquire made inside a caller's
-- transaction: the client inserts it first (sqldlm_create_pending, its own
-- transaction); a grant by sqldlm_acquire_tx deletes it inside the caller's
-- transaction. Once that call has returned, the row is gone if that
-- transaction committed, there but locked (by the delete) while it is open,
-- and there and unlocked if it rolled back or nothing was granted:
-- sqldlm_pending_outcome tells these apart without waiting.
-- sqldlm_delete_lease and sqldlm_reap delete the rows of the leases they
-- delete; sqldlm_reap also those whose lease no longer exists.
--
-- sqldlm_acquire_tx runs in the caller's transaction, so it cannot set the
-- isolation level, and MySQL has no privilege-free way to read the current
-- transaction's level. It is safe at READ COMMITTED and at REPEATABLE READ:
-- it locks the name's sqldlm_locks row first (a locking read sees the latest
-- committed version) and compares the row's token with a consistent read of
-- it. Every grant of the name updates that token under the row's lock, so
-- equal tokens prove that the transaction's snapshot has every hold of the
-- name (holds released, or leases renewed, after the snapshot only make the
-- answer more cautious: Blocked). A snapshot older than the name's last
-- grant makes it raise error 1644 with a message starting 'sqldlm isolation:'
-- before it changes anything, and so does an own lease that looks dead in a
-- snapshot older than the request's pending row (rather than answer "lease
-- lost" from an old snapshot). At REPEATABLE READ its locking reads also take
-- InnoDB's gap locks; READ COMMITTED is the level to use. It never locks the
-- own lease row (that would hold off the lease's renewals until the caller's
-- transaction ends); a dead lease's row and holds it locks (FOR UPDATE SKIP
-- LOCKED) only to take them over.
--
-- A grant that sqldlm_acquire_tx made stays uncommitted for as long as the
-- caller's transaction lasts, and keeps the name's row locked: other grants
-- of the name wait for it. Reap never waits for it: it deletes holds one by
-- one through the primary key, leaves a dead lease whose pending rows another
-- transaction has locked (a grant in progress) to a later pass, and picks
-- idle lock rows, orphaned pending rows and old audit rows with FOR UPDATE
-- SKIP LOCKED. A takeover likewise deletes a dead lease's holds of the name
-- through the primary key, never scanning that lease's other holds.
--
-- The procedures that change follow the conventions of version 1 (see its
-- header). sqldlm_acquire's result sets keep their columns; a takeover now
-- returns one result set per taken-over hold rather than per lease.
-- sqldlm_reap's counts row gains a fifth column, audit_rows. Down drops what
-- Up created and restores the version 2 procedures as 00001 and 00002 define
-- them.

-- +goose Up
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

CREATE TABLE sqldlm_settings (
    id                 SMALLINT NOT NULL PRIMARY KEY,
    audit              BOOLEAN  NOT NULL DEFAULT FALSE,
    audit_retention_us BIGINT   NOT NULL DEFAULT 604800000000,   -- 7 days
    CONSTRAINT sqldlm_settings_one CHECK (id = 1),
    CONSTRAINT sqldlm_settings_retention CHECK (audit_retention_us >= 1000000)
) ENGINE=InnoDB;
INSERT INTO sqldlm_settings (id) VALUES (1);

CREATE TABLE sqldlm_audit (
    id       BIGINT          NOT NULL AUTO_INCREMENT PRIMARY KEY, -- order of writing
    at       DATETIME(6)     NOT NULL,                            -- SYSDATE(6) under UTC
    event    VARCHAR(16)     CHARACTER SET ascii NOT NULL,
    name     VARBINARY(255)  NOT NULL,
    owner    VARBINARY(255)  NOT NULL,                            -- '' when the lease row is gone
    lease_id BIGINT          NOT NULL,
    token    BIGINT          NOT NULL,
    mode     CHAR(1)         CHARACTER SET ascii NOT NULL,
    payload  VARBINARY(1024) NOT NULL DEFAULT '',
    detail   VARBINARY(1024) NOT NULL DEFAULT '',
    KEY sqldlm_audit_name (name, id),
    KEY sqldlm_audit_at (at),
    CONSTRAINT sqldlm_audit_event CHECK (event IN ('grant', 'upgrade', 'downgrade', 'release', 'takeover', 'expire', 'break')),
    CONSTRAINT sqldlm_audit_mode CHECK (mode IN ('S', 'X'))
) ENGINE=InnoDB;

-- Requests sqldlm_acquire_tx is making.
CREATE TABLE sqldlm_pending (
    lease_id   BIGINT      NOT NULL,
    request_id BIGINT      NOT NULL,
    created_at DATETIME(6) NOT NULL,
    PRIMARY KEY (lease_id, request_id)
) ENGINE=InnoDB;

-- The version 2 procedures that change, re-created below.
DROP PROCEDURE IF EXISTS sqldlm_acquire;
DROP PROCEDURE IF EXISTS sqldlm_delete_lease;
DROP PROCEDURE IF EXISTS sqldlm_abandon;
DROP PROCEDURE IF EXISTS sqldlm_release;
DROP PROCEDURE IF EXISTS sqldlm_downgrade;
DROP PROCEDURE IF EXISTS sqldlm_reap;
DROP PROCEDURE IF EXISTS sqldlm_break;

-- sqldlm_take_over deletes the holds of name p_name of the dead lease
-- p_lease, which the caller has locked (the lease row, unless it is missing,
-- and each of those holds: sqldlm_lock_holds), and marks the lease broken so
-- that no late renewal revives it. For each hold, in token order, it returns
-- a result set of one row if the hold conflicts with mode p_mode (owner,
-- lease_id, token, mode, expired_at_us: the lease's expires_at, broken:
-- whether the lease had been broken before, payload; owner '',
-- expired_at_us 0 and broken 0 when the lease row is missing), and writes a
-- takeover row 'by p_by' when p_audit; o_taken counts the result sets. It
-- reads the holds by primary key and deletes them one by one, so it never
-- touches the lease's other holds (one may be a grant that another caller's
-- transaction has not committed yet). Rows are read with locking reads (all
-- locked by the caller already), so they are the latest versions even in a
-- REPEATABLE READ transaction. A helper of sqldlm_acquire_decide.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_take_over(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_mode CHAR(1) CHARACTER SET ascii,
    IN p_by VARBINARY(255), IN p_audit BOOLEAN, OUT o_taken INT)
BEGIN
    DECLARE v_token BIGINT DEFAULT 0;
    DECLARE v_n INT;
    DECLARE v_owner VARBINARY(255) DEFAULT '';
    DECLARE v_expired_us BIGINT DEFAULT 0;
    DECLARE v_broken BOOLEAN DEFAULT FALSE;
    DECLARE v_mode CHAR(1) CHARACTER SET ascii;
    DECLARE v_payload VARBINARY(1024);
    DECLARE CONTINUE HANDLER FOR NOT FOUND BEGIN END;
    SET o_taken = 0;
    -- A consistent read first: a locking read of a missing row would take a
    -- gap lock at REPEATABLE READ. (A hold the snapshot shows has a lease
    -- row the snapshot shows, unless that row was deleted before it.)
    SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = p_lease;
    IF v_n > 0 THEN
        SELECT owner, TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', expires_at), broken_at IS NOT NULL
          INTO v_owner, v_expired_us, v_broken
          FROM sqldlm_leases WHERE id = p_lease FOR UPDATE;
    END IF;
    holds: LOOP
        SELECT MIN(token) INTO v_token FROM sqldlm_holders
         WHERE lease_id = p_lease AND name = p_name AND token > v_token;
        IF v_token IS NULL THEN
            LEAVE holds;
        END IF;
        SELECT mode, payload INTO v_mode, v_payload FROM sqldlm_holders WHERE token = v_token FOR UPDATE;
        IF p_mode = 'X' OR v_mode = 'X' THEN
            SELECT v_owner AS owner, p_lease AS lease_id, v_token AS token, v_mode AS mode,
                   v_expired_us AS expired_at_us, v_broken AS broken, v_payload AS payload;
            SET o_taken = o_taken + 1;
        END IF;
        IF p_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            VALUES (SYSDATE(6), 'takeover', p_name, v_owner, p_lease, v_token, v_mode, v_payload, CONCAT('by ', p_by));
        END IF;
        DELETE FROM sqldlm_holders WHERE token = v_token;
    END LOOP holds;
    IF v_n > 0 THEN
        UPDATE sqldlm_leases SET broken_at = SYSDATE(6) WHERE id = p_lease AND broken_at IS NULL;
    END IF;
END
-- +goose StatementEnd

-- sqldlm_acquire_decide is the decision and the grant shared by
-- sqldlm_acquire and sqldlm_acquire_tx, run in the caller's transaction
-- (the time zone set to '+00:00' and the arguments normalized by the
-- caller). It never commits or rolls back: a refusal has changed nothing but
-- maybe inserted the name's sqldlm_locks row; a fresh grant (o_granted) has
-- made every change, for the caller to commit. o_status is 1 granted
-- (o_token; o_granted is false for a repeated request), 2 blocked (o_owner,
-- o_mode, o_expires_us of the conflicting hold, NULL when only waiters are
-- ahead, and o_ahead), 3 lease lost, 4 not held, 5 upgrade conflict; o_taken
-- counts the taken-over holds it returned as result sets.
--
-- Phase 1 decides with consistent reads and takes no row lock: a blocked
-- request (the common case while waiting) returns at once. Phase 2 runs only
-- when nothing seemed to block, and locks in this order: the name's
-- sqldlm_locks row (every grant of the name serializes on it), the requesting
-- lease (shared, so it cannot be broken or reaped meanwhile; not when
-- p_in_tx), then each dead lease whose holds conflict, in id order, and their
-- holds, without waiting (FOR UPDATE SKIP LOCKED: a locked one makes the
-- request Blocked). It re-checks everything after its locks (that a dead
-- lease has been dead for the lock delay with a locking read, which sees the
-- latest version even in an old snapshot), and only once every dead lease is
-- locked does it change anything: insert the hold (its AUTO_INCREMENT is the
-- token; a payload too long fails here, before any other change), take the
-- dead leases over (sqldlm_take_over), write the grant's audit row, delete an
-- upgraded hold, update the name's row and delete the request's waiter row.
--
-- With p_in_tx (sqldlm_acquire_tx) it also checks, right after the name's
-- row is locked, that the transaction's snapshot is not older than the
-- name's last grant, and that an own lease that looks dead does so in a
-- snapshot that has the request's pending row (see the header); and a grant,
-- a repeated request's included, deletes the pending row as its first
-- change, so that no error can leave a grant whose pending row is still
-- there.
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

-- sqldlm_acquire grants a hold of p_name to request (p_lease, p_request) in
-- mode p_mode ('S' or 'X'), or upgrades the caller's shared hold p_upgrade (0
-- for none) to an exclusive one, in a transaction of its own. The new hold
-- stores p_payload; an upgrade with an empty p_payload keeps the shared
-- hold's. p_delay_us is the lock delay: a conflicting hold of a dead lease is
-- taken over only once the lease has been dead (since the earlier of its
-- expires_at and broken_at) for that long; until then it blocks like a live
-- one, reported with the time left of the delay as expires_in_us. Its last
-- result set is one row: status (1 granted, 2 blocked, 3 lease lost, 4 not
-- held, 5 upgrade conflict), token (when granted), when blocked owner, mode
-- and expires_in_us of the conflicting hold (NULL when only waiters are
-- ahead) and waiters_ahead, and took_over: how many holds of dead leases this
-- call's grant deleted (0 unless this call committed a grant).
--
-- Before it, a takeover returns one result set per conflicting hold of a
-- dead lease that it deletes (owner, lease_id, token, mode, expired_at_us:
-- the lease's expires_at, broken: whether the lease had been broken before
-- this grant, payload; a hold whose lease row is missing has owner '',
-- expired_at_us 0 and broken 0). The two kinds of result set both have seven
-- columns: the first column's name (owner or status) tells them apart. They
-- are sent before the COMMIT and count only if the last row has status 1 and
-- a took_over equal to their number; the last row is sent after the COMMIT,
-- so an error the COMMIT raises takes its place.
--
-- The decision and the grant are sqldlm_acquire_decide's. A refusal rolls
-- back (the name's row it may have inserted); a blocked request then
-- inserts its waiter row when p_enqueue.
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

-- sqldlm_acquire_tx is sqldlm_acquire for a request that
-- sqldlm_create_pending has recorded, inside the caller's transaction: no
-- START TRANSACTION, COMMIT, ROLLBACK or SET TRANSACTION, and on an error it
-- only puts the time zone back and re-raises. It never queues nor upgrades.
-- Same result sets as sqldlm_acquire. When it grants (a repeated request
-- included) it deletes the pending row, which then stays locked until the
-- caller's transaction ends; any other outcome leaves the row alone. The
-- grant, its takeovers and audit rows are the caller's to commit or roll
-- back. It raises error 1644 'sqldlm isolation: ...' when the transaction's
-- snapshot is too old (see the header), before it changes anything.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_acquire_tx(
    IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_request BIGINT,
    IN p_mode CHAR(1) CHARACTER SET ascii, IN p_payload VARBINARY(4096), IN p_delay_us BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_status INT DEFAULT 0;
    DECLARE v_token BIGINT DEFAULT NULL;
    DECLARE v_owner VARBINARY(255) DEFAULT NULL;
    DECLARE v_mode CHAR(1) CHARACTER SET ascii DEFAULT NULL;
    DECLARE v_expires_us BIGINT DEFAULT NULL;
    DECLARE v_ahead INT DEFAULT 0;
    DECLARE v_taken INT DEFAULT 0;
    DECLARE v_granted BOOLEAN DEFAULT FALSE;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        SET time_zone = saved_tz;
        RESIGNAL;
    END;

    SET time_zone = '+00:00';
    SET p_payload = COALESCE(p_payload, '');
    SET p_delay_us = LEAST(GREATEST(COALESCE(p_delay_us, 0), 0), 3155760000000000);
    CALL sqldlm_acquire_decide(p_name, p_lease, p_request, p_mode, 0, p_payload, p_delay_us, TRUE,
                               v_status, v_token, v_owner, v_mode, v_expires_us, v_ahead, v_taken, v_granted);
    IF NOT v_granted THEN
        SET v_taken = 0;
    END IF;
    SET time_zone = saved_tz;
    SELECT v_status AS status, v_token AS token, v_owner AS owner, v_mode AS mode,
           v_expires_us AS expires_in_us, v_ahead AS waiters_ahead, v_taken AS took_over;
END
-- +goose StatementEnd

-- sqldlm_create_pending records request (p_lease, p_request), which is about
-- to be made with sqldlm_acquire_tx, with the server's clock.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_create_pending(IN p_lease BIGINT, IN p_request BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    INSERT INTO sqldlm_pending (lease_id, request_id, created_at) VALUES (p_lease, p_request, SYSDATE(6));
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- sqldlm_pending_outcome tells what became of request (p_lease, p_request)
-- recorded by sqldlm_create_pending, once its sqldlm_acquire_tx call has
-- returned, without waiting for any lock. It returns one row, outcome: 1
-- while the transaction that granted it is open (the row is visible to a
-- consistent read, its delete not being committed, but locked); 2 once a
-- grant of it has committed, or its lease was deleted (no row); 3 if none
-- has and none can any more (the row is there and unlocked: never granted,
-- or rolled back), and then it deletes the row.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_pending_outcome(IN p_lease BIGINT, IN p_request BIGINT)
BEGIN
    DECLARE v_n INT;
    DECLARE v_outcome INT DEFAULT 2;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        RESIGNAL;
    END;
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    SELECT COUNT(*) INTO v_n FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
    IF v_n > 0 THEN
        SELECT COUNT(*) INTO v_n FROM sqldlm_pending
         WHERE lease_id = p_lease AND request_id = p_request FOR UPDATE SKIP LOCKED;
        IF v_n > 0 THEN
            DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
            SET v_outcome = 3;
        ELSE
            -- Locked, unless deleted (committed) since the read above: then
            -- the next call says so.
            SET v_outcome = 1;
        END IF;
    END IF;
    COMMIT;
    SELECT v_outcome AS outcome;
END
-- +goose StatementEnd

-- sqldlm_delete_lease deletes a lease with its holds, waiters and pending
-- rows, writing a release row 'lease closed' per hold when audit is on. Its
-- one result set is the names of the deleted holds (a name once per hold).
-- The lease row is locked first, as every operation that locks a lease and
-- its holds does, so no hold of the lease can be granted meanwhile (a grant
-- that a caller's transaction has not committed yet is waited for).
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

-- sqldlm_abandon withdraws request (p_lease, p_request): it deletes its hold,
-- if it obtained one (a release row 'abandoned' when audit is on), and its
-- waiter row. Its one result set is the names of the deleted holds.
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

-- sqldlm_release_hold deletes a hold in the caller's transaction, writing a
-- release row first when audit is on (the hold then locked first, read by
-- primary key; the lease's owner read without a lock, so that the lease's
-- renewals go on). o_n is 1, or 0 if the hold did not exist. A helper of
-- sqldlm_release and sqldlm_release_tx, with the time zone set to '+00:00'.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_release_hold(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT, OUT o_n INT)
BEGIN
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    DECLARE v_owner VARBINARY(255) DEFAULT '';
    SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
    IF v_audit THEN
        SELECT COUNT(*) INTO o_n FROM sqldlm_holders
         WHERE token = p_token AND lease_id = p_lease AND name = p_name FOR UPDATE;
        IF o_n > 0 THEN
            SELECT COALESCE(MAX(owner), '') INTO v_owner FROM sqldlm_leases WHERE id = p_lease;
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            SELECT SYSDATE(6), 'release', name, v_owner, lease_id, token, mode, payload, ''
              FROM sqldlm_holders WHERE token = p_token;
        END IF;
    END IF;
    DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name;
    SET o_n = ROW_COUNT();
END
-- +goose StatementEnd

-- sqldlm_release deletes a hold and returns 1, or 0 if it did not exist.
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

-- sqldlm_release_tx is sqldlm_release inside the caller's transaction: no
-- START TRANSACTION, COMMIT, ROLLBACK or SET TRANSACTION; on an error it
-- only puts the time zone back and re-raises.
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

-- sqldlm_downgrade makes a hold of a live lease shared, keeping its token,
-- and returns 1 (with a downgrade row when audit is on), or 0 if the hold
-- does not exist or its lease is not live. The hold is locked first (a
-- takeover cannot delete it meanwhile), then the lease read with a fresh
-- snapshot, without locking it.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_downgrade(IN p_name VARBINARY(1024), IN p_lease BIGINT, IN p_token BIGINT)
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
    SELECT COUNT(*) INTO v_n FROM sqldlm_holders
     WHERE token = p_token AND lease_id = p_lease AND name = p_name FOR UPDATE;
    IF v_n > 0 THEN
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > SYSDATE(6);
        IF v_n > 0 THEN
            UPDATE sqldlm_holders SET mode = 'S' WHERE token = p_token;
            SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
            IF v_audit THEN
                INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                SELECT SYSDATE(6), 'downgrade', h.name, COALESCE(l.owner, ''), h.lease_id, h.token, h.mode, h.payload, ''
                  FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id
                 WHERE h.token = p_token;
            END IF;
        END IF;
    END IF;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n > 0 AS downgraded;
END
-- +goose StatementEnd

-- sqldlm_reap deletes up to p_limit dead leases (expired or broken) with
-- their holds (an expire row each when audit is on), waiters and pending
-- rows; then, in a second transaction, up to p_limit sqldlm_locks rows with
-- no holds and no waiters whose last grant is older than p_idle_us, up to
-- p_limit pending rows whose lease no longer exists, and up to p_limit audit
-- rows older than the audit retention (whether or not audit is on). Every
-- row it deletes it has first locked with FOR UPDATE SKIP LOCKED (a dead
-- lease's holds one by one through the primary key), so it never waits: a
-- lease one of whose holds another transaction has locked (a fence), or one
-- of whose pending rows (a grant in a caller's transaction not yet ended),
-- is left for a later pass, and so are rows that other transactions have
-- locked. It returns one result set of names per reaped lease that had holds
-- (a name once per hold), then one row: leases, holds, waiters, idle_locks,
-- audit_rows.
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

-- sqldlm_break marks broken (dead at once: broken_at and expires_at set to
-- the server's clock) every live lease that holds p_name, only p_owner's
-- unless it is ''. When audit is on it writes a break row per hold of each
-- lease it breaks (detail '' for holds of p_name, 'with <p_name>' for the
-- others). Its result sets: one row per broken lease, in the columns of
-- sqldlm_inspect_leases, then one row: skipped.
--
-- It locks the candidate leases one at a time in id order with FOR UPDATE
-- SKIP LOCKED, re-checks each (live, still holding p_name) after the lock and
-- updates it; it never waits for a row lock. A lease row that another
-- transaction has locked is left as it is and counted in skipped when it is
-- still live: most such locks are brief (a renewal, a grant's shared lock on
-- its own lease), and the caller retries, but some last as long as a fenced
-- transaction (a Fence at SERIALIZABLE holds its lease row shared; a
-- DeleteLease holds the lease row while it waits for a fenced hold), and
-- waiting for those would be waiting for the fence. The leases' holds are not
-- locked: a fenced transaction's hold survives the break (as the fence
-- promises) and is taken over once the fence ends.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_break(IN p_name VARBINARY(1024), IN p_owner VARBINARY(1024))
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_now DATETIME(6);
    DECLARE v_id BIGINT;
    DECLARE v_last BIGINT DEFAULT NULL;
    DECLARE v_n INT;
    DECLARE v_skipped INT DEFAULT 0;
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
    SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
    victims: LOOP
        SELECT MIN(h.lease_id) INTO v_id
          FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
         WHERE h.name = p_name AND (v_last IS NULL OR h.lease_id > v_last)
           AND (p_owner = '' OR l.owner = p_owner)
           AND l.broken_at IS NULL AND l.expires_at > SYSDATE(6);
        IF v_id IS NULL THEN
            LEAVE victims;
        END IF;
        SET v_last = v_id;
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = v_id FOR UPDATE SKIP LOCKED;
        SET v_now = SYSDATE(6);
        IF v_n = 0 THEN
            -- Locked by another transaction, unless deleted since the read
            -- above: skipped if it is still live.
            SELECT COUNT(*) INTO v_n FROM sqldlm_leases
             WHERE id = v_id AND broken_at IS NULL AND expires_at > v_now;
            SET v_skipped = v_skipped + v_n;
            ITERATE victims;
        END IF;
        -- Under the lock, by the latest committed versions: still live, and
        -- still holding the name?
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases l
         WHERE l.id = v_id AND l.broken_at IS NULL AND l.expires_at > v_now
           AND (p_owner = '' OR l.owner = p_owner)
           AND EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.lease_id = v_id AND h.name = p_name);
        IF v_n > 0 THEN
            UPDATE sqldlm_leases SET broken_at = v_now, expires_at = LEAST(expires_at, v_now) WHERE id = v_id;
            IF v_audit THEN
                INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                SELECT SYSDATE(6), 'break', h.name, l.owner, h.lease_id, h.token, h.mode, h.payload,
                       IF(h.name = p_name, '', CONCAT('with ', p_name))
                  FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
                 WHERE h.lease_id = v_id
                 ORDER BY h.token;
            END IF;
            SELECT l.id,
                   l.owner,
                   TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', l.created_at) AS created_us,
                   TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', l.renewed_at) AS renewed_us,
                   TIMESTAMPDIFF(MICROSECOND, v_now, l.expires_at) AS expires_in_us,
                   (l.broken_at IS NOT NULL) AS broken,
                   (l.broken_at IS NULL AND l.expires_at > v_now) AS live,
                   (SELECT COUNT(*) FROM sqldlm_holders h WHERE h.lease_id = l.id) AS holds,
                   (SELECT COUNT(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id) AS waits
              FROM sqldlm_leases l
             WHERE l.id = v_id;
        END IF;
    END LOOP victims;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_skipped AS skipped;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;

-- +goose Down
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

DROP PROCEDURE sqldlm_break;
DROP PROCEDURE sqldlm_reap;
DROP PROCEDURE sqldlm_downgrade;
DROP PROCEDURE sqldlm_release_tx;
DROP PROCEDURE sqldlm_release;
DROP PROCEDURE sqldlm_release_hold;
DROP PROCEDURE sqldlm_abandon;
DROP PROCEDURE sqldlm_delete_lease;
DROP PROCEDURE sqldlm_pending_outcome;
DROP PROCEDURE sqldlm_create_pending;
DROP PROCEDURE sqldlm_acquire_tx;
DROP PROCEDURE sqldlm_acquire;
DROP PROCEDURE sqldlm_acquire_decide;
DROP PROCEDURE sqldlm_take_over;
DROP TABLE sqldlm_pending;
DROP TABLE sqldlm_audit;
DROP TABLE sqldlm_settings;

-- Version 2's procedures, as 00001 and 00002 define them.

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

-- +goose StatementBegin
CREATE PROCEDURE sqldlm_break(IN p_name VARBINARY(1024), IN p_owner VARBINARY(1024))
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_now DATETIME(6);
    DECLARE v_id BIGINT;
    DECLARE v_last BIGINT DEFAULT NULL;
    DECLARE v_n INT;
    DECLARE v_skipped INT DEFAULT 0;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    victims: LOOP
        SELECT MIN(h.lease_id) INTO v_id
          FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
         WHERE h.name = p_name AND (v_last IS NULL OR h.lease_id > v_last)
           AND (p_owner = '' OR l.owner = p_owner)
           AND l.broken_at IS NULL AND l.expires_at > SYSDATE(6);
        IF v_id IS NULL THEN
            LEAVE victims;
        END IF;
        SET v_last = v_id;
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases WHERE id = v_id FOR UPDATE SKIP LOCKED;
        SET v_now = SYSDATE(6);
        IF v_n = 0 THEN
            -- Locked by another transaction, unless deleted since the read
            -- above: skipped if it is still live.
            SELECT COUNT(*) INTO v_n FROM sqldlm_leases
             WHERE id = v_id AND broken_at IS NULL AND expires_at > v_now;
            SET v_skipped = v_skipped + v_n;
            ITERATE victims;
        END IF;
        -- Under the lock, by the latest committed versions: still live, and
        -- still holding the name?
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases l
         WHERE l.id = v_id AND l.broken_at IS NULL AND l.expires_at > v_now
           AND (p_owner = '' OR l.owner = p_owner)
           AND EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.lease_id = v_id AND h.name = p_name);
        IF v_n > 0 THEN
            UPDATE sqldlm_leases SET broken_at = v_now, expires_at = LEAST(expires_at, v_now) WHERE id = v_id;
            SELECT l.id,
                   l.owner,
                   TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', l.created_at) AS created_us,
                   TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', l.renewed_at) AS renewed_us,
                   TIMESTAMPDIFF(MICROSECOND, v_now, l.expires_at) AS expires_in_us,
                   (l.broken_at IS NOT NULL) AS broken,
                   (l.broken_at IS NULL AND l.expires_at > v_now) AS live,
                   (SELECT COUNT(*) FROM sqldlm_holders h WHERE h.lease_id = l.id) AS holds,
                   (SELECT COUNT(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id) AS waits
              FROM sqldlm_leases l
             WHERE l.id = v_id;
        END IF;
    END LOOP victims;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_skipped AS skipped;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;
