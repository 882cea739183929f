-- sqldlm schema version 7 for MySQL 8 and MariaDB 10.6+: group membership
-- (issue 16), as PostgreSQL's version 9 and SQLite's version 5 have it.
--
-- A member is a row of sqldlm_members that hangs off a lease: it is live
-- exactly while its lease is live by the server's clock (SYSDATE(6)), so
-- members add no heartbeat of their own. Each group has a row in
-- sqldlm_groups whose generation counts the group's changes. Group names,
-- member ids and meta are VARBINARY: compared and sorted byte by byte.
--
-- The generation a read reports is the stored generation plus the number
-- of the group's member rows whose lease is not live. Join, Leave and
-- SetMeta first write the group's row (sqldlm_group_lock: INSERT ... ON
-- DUPLICATE KEY UPDATE writes = writes + 1, which creates it, locks it
-- and changes it), sweep the group (below), and add one to the stored
-- generation when they change a member. The sweep marks broken the
-- expired leases of the group's members: per lease, in id order, SELECT
-- ... FOR UPDATE SKIP LOCKED re-checks the expiry after the lease row's
-- lock (a renewal in flight wins, and a broken lease is never renewed: the
-- member learns it is out at its next renewal at the latest, and its
-- client's trust deadline has passed before the expiry anyway), then
-- UPDATE sets broken_at. It then deletes the member rows of leases that
-- are broken or gone, one by one by primary key after a consistent read
-- (a DELETE with a subquery on sqldlm_leases would take shared locks on
-- the lease rows, even at READ COMMITTED), and adds their number to the
-- stored generation. So a dead member counts once, first as not live, then
-- as swept; the generation never goes back and changes with every join,
-- leave, update and expiry.
--
-- As in Acquire and Reap (version 1's header), the sweep never waits for a
-- lease row: one locked by another transaction (a renewal, a DeleteLease
-- waiting for a fenced hold) is skipped and left to a later sweep. Its
-- member still counts as not live in reads; a Join of its id answers
-- 'taken' (status 2, the lease's expiry already past) until it is swept,
-- since a renewal in flight may yet keep it. Group operations lock nothing
-- else that other transactions hold for long: the group's row is locked
-- only by group operations, and member and withdrawal rows are written
-- only under it. The lock order is the group's row, then lease rows (the
-- sweep's, never waited for); the lock procedures never lock a group row.
--
-- Through Galera, row locks are local to a node, but every group operation
-- writes the group's row (writes + 1, even one that changes no member), so
-- certification serializes them across nodes: of two concurrent ones on
-- different nodes the second certified fails with 1213 (ER_LOCK_DEADLOCK,
-- retried by the client). A sweep's write to a lease row conflicts the same
-- way with a renewal of it through another node.
--
-- A member's incarnation is the stored generation right after its join: a
-- rejoin always has a higher one. A request is (lease, request id): a
-- repeated join returns the membership it made; a leave records the
-- request in sqldlm_member_withdrawn, and a join of a recorded request
-- joins nothing, however late its statement runs. Records go with the
-- sweep once their lease is broken or gone.
--
-- The procedures follow version 1's conventions: SYSDATE(6) under time_zone
-- '+00:00', the session's time_zone restored in every path, READ COMMITTED,
-- START TRANSACTION ... COMMIT inside, ROLLBACK and RESIGNAL on any error,
-- times and durations as BIGINT microseconds. They are the contract for
-- clients in other languages:
--
--   CALL sqldlm_group_join(group, member, lease, request, meta, weight)
--   CALL sqldlm_group_leave(group, member, lease, request)
--   CALL sqldlm_group_set_meta(group, member, lease, request, meta)
--   CALL sqldlm_group_members(group)
--   CALL sqldlm_group_generation(group)
--
-- Members and Generation are plain reads in one READ ONLY transaction WITH
-- CONSISTENT SNAPSHOT, like the Inspector's procedures: no lock, no write.

-- +goose Up
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

ALTER TABLE sqldlm_audit DROP CONSTRAINT sqldlm_audit_event,
    ADD CONSTRAINT sqldlm_audit_event
        CHECK (event IN ('grant', 'upgrade', 'downgrade', 'release', 'takeover', 'expire', 'break', 'join', 'leave', 'update'));

CREATE TABLE sqldlm_groups (
    name       VARBINARY(255) NOT NULL PRIMARY KEY,
    generation BIGINT         NOT NULL DEFAULT 0,   -- stored generation (reads add the dead member rows)
    writes     BIGINT         NOT NULL DEFAULT 0,   -- every operation adds one: a write Galera certifies
    CONSTRAINT sqldlm_groups_name CHECK (LENGTH(name) BETWEEN 1 AND 255)
) ENGINE=InnoDB;

CREATE TABLE sqldlm_members (
    group_name  VARBINARY(255)  NOT NULL,
    member_id   VARBINARY(255)  NOT NULL,
    lease_id    BIGINT          NOT NULL,
    request_id  BIGINT          NOT NULL,
    incarnation BIGINT          NOT NULL,
    meta        VARBINARY(8192) NOT NULL DEFAULT '',
    weight      DOUBLE          NOT NULL DEFAULT 1,
    joined_at   DATETIME(6)     NOT NULL,
    PRIMARY KEY (group_name, member_id),
    KEY sqldlm_members_lease (lease_id),
    CONSTRAINT sqldlm_members_member_id CHECK (LENGTH(member_id) BETWEEN 1 AND 255),
    CONSTRAINT sqldlm_members_weight CHECK (weight > 0)
) ENGINE=InnoDB;

CREATE TABLE sqldlm_member_withdrawn (
    lease_id     BIGINT         NOT NULL,
    request_id   BIGINT         NOT NULL,
    group_name   VARBINARY(255) NOT NULL,
    withdrawn_at DATETIME(6)    NOT NULL,
    PRIMARY KEY (lease_id, request_id),
    KEY sqldlm_member_withdrawn_group (group_name, lease_id)
) ENGINE=InnoDB;

-- sqldlm_members_view: every member row with its liveness, for operators
-- and for joins with business tables (see version 2's header on the views'
-- text columns and clock).
CREATE VIEW sqldlm_members_view AS
SELECT CAST(m.group_name AS CHAR CHARACTER SET utf8mb4) AS group_name,
       CAST(m.member_id AS CHAR CHARACTER SET utf8mb4) AS member_id,
       CAST(l.owner AS CHAR CHARACTER SET utf8mb4) AS owner,
       m.lease_id,
       m.incarnation,
       CAST(m.meta AS CHAR CHARACTER SET utf8mb4) AS meta,
       m.weight,
       m.joined_at,
       ROUND(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), l.expires_at) / 1000000, 3) AS expires_in_seconds,
       COALESCE(l.broken_at IS NULL AND l.expires_at > UTC_TIMESTAMP(6), 0) AS live
FROM sqldlm_members m LEFT JOIN sqldlm_leases l ON l.id = m.lease_id;

-- sqldlm_group_lock runs in its caller's transaction (no transaction
-- control): it creates, locks and writes the group's row, reads the clock
-- into o_now, sweeps the group and returns its stored generation after the
-- sweep.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_group_lock(IN p_group VARBINARY(1024), OUT o_generation BIGINT, OUT o_now DATETIME(6))
BEGIN
    DECLARE v_id BIGINT;
    DECLARE v_last BIGINT DEFAULT NULL;
    DECLARE v_member VARBINARY(255);
    DECLARE v_after VARBINARY(255) DEFAULT NULL;
    DECLARE v_n INT;
    DECLARE v_swept INT DEFAULT 0;
    DECLARE v_audit BOOLEAN DEFAULT FALSE;
    SELECT COALESCE(MAX(audit), FALSE) INTO v_audit FROM sqldlm_settings WHERE id = 1;
    INSERT INTO sqldlm_groups (name, generation, writes) VALUES (p_group, 0, 1)
        ON DUPLICATE KEY UPDATE writes = writes + 1;
    SELECT generation INTO o_generation FROM sqldlm_groups WHERE name = p_group FOR UPDATE;
    SET o_now = SYSDATE(6);
    -- Expired leases of the group's members, in id order: each locked
    -- without waiting, re-checked under the lock, marked broken.
    expired: LOOP
        SELECT MIN(l.id) INTO v_id
          FROM sqldlm_members m JOIN sqldlm_leases l ON l.id = m.lease_id
         WHERE m.group_name = p_group AND (v_last IS NULL OR l.id > v_last)
           AND l.broken_at IS NULL AND l.expires_at <= o_now;
        IF v_id IS NULL THEN
            LEAVE expired;
        END IF;
        SET v_last = v_id;
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = v_id AND broken_at IS NULL AND expires_at <= o_now FOR UPDATE SKIP LOCKED;
        IF v_n > 0 THEN
            UPDATE sqldlm_leases SET broken_at = o_now WHERE id = v_id;
        END IF;
    END LOOP expired;
    -- Member rows of broken or missing leases (consistent reads), deleted
    -- by primary key.
    dead: LOOP
        SELECT MIN(m.member_id) INTO v_member
          FROM sqldlm_members m LEFT JOIN sqldlm_leases l ON l.id = m.lease_id
         WHERE m.group_name = p_group AND (v_after IS NULL OR m.member_id > v_after)
           AND (l.id IS NULL OR l.broken_at IS NOT NULL);
        IF v_member IS NULL THEN
            LEAVE dead;
        END IF;
        SET v_after = v_member;
        IF v_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            SELECT o_now, 'expire', LEFT(CONCAT('sqldlm:group:', m.group_name, ':', m.member_id), 255),
                   COALESCE(l.owner, ''), m.lease_id, m.incarnation, 'X', LEFT(m.meta, 1024), 'member'
              FROM sqldlm_members m LEFT JOIN sqldlm_leases l ON l.id = m.lease_id
             WHERE m.group_name = p_group AND m.member_id = v_member;
        END IF;
        DELETE FROM sqldlm_members WHERE group_name = p_group AND member_id = v_member;
        SET v_swept = v_swept + ROW_COUNT();
    END LOOP dead;
    -- Withdrawal records of broken or missing leases.
    SET v_last = NULL;
    records: LOOP
        SELECT MIN(w.lease_id) INTO v_id
          FROM sqldlm_member_withdrawn w LEFT JOIN sqldlm_leases l ON l.id = w.lease_id
         WHERE w.group_name = p_group AND (v_last IS NULL OR w.lease_id > v_last)
           AND (l.id IS NULL OR l.broken_at IS NOT NULL);
        IF v_id IS NULL THEN
            LEAVE records;
        END IF;
        SET v_last = v_id;
        DELETE FROM sqldlm_member_withdrawn WHERE lease_id = v_id AND group_name = p_group;
    END LOOP records;
    IF v_swept > 0 THEN
        UPDATE sqldlm_groups SET generation = generation + v_swept WHERE name = p_group;
        SET o_generation = o_generation + v_swept;
    END IF;
END
-- +goose StatementEnd

-- sqldlm_group_audit writes an audit row of p_event for the member row of
-- p_member in p_group, when the audit log is on (in the caller's
-- transaction).
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_group_audit(IN p_event VARCHAR(16), IN p_group VARBINARY(1024), IN p_member VARBINARY(1024),
                                    IN p_now DATETIME(6))
BEGIN
    INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
    SELECT p_now, p_event, LEFT(CONCAT('sqldlm:group:', m.group_name, ':', m.member_id), 255),
           COALESCE(l.owner, ''), m.lease_id, m.incarnation, 'X', LEFT(m.meta, 1024), ''
      FROM sqldlm_members m JOIN sqldlm_settings s ON s.id = 1 AND s.audit
      LEFT JOIN sqldlm_leases l ON l.id = m.lease_id
     WHERE m.group_name = p_group AND m.member_id = p_member;
END
-- +goose StatementEnd

-- sqldlm_group_sweep sweeps p_group (see sqldlm_group_lock) in a
-- transaction of its own and returns one row: the stored generation after
-- it. Readers call it when they find a member whose lease has expired but
-- is not broken yet.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_group_sweep(IN p_group VARBINARY(1024))
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_gen BIGINT;
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
    CALL sqldlm_group_lock(p_group, v_gen, v_now);
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_gen AS generation;
END
-- +goose StatementEnd

-- sqldlm_group_join makes lease p_lease a member of p_group as p_member. It
-- returns one row: status 1 joined (incarnation; also for a repeated
-- request), 2 taken (the member of that id: owner, lease_id, request_id,
-- incarnation, expires_in_us), 3 the joining lease is not live, 4 the
-- request was withdrawn; generation is the stored generation after the
-- call. p_meta is wider than its column so that an overlong one fails
-- rather than being cut under a non-strict caller.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_group_join(IN p_group VARBINARY(1024), IN p_member VARBINARY(1024), IN p_lease BIGINT,
                                   IN p_request BIGINT, IN p_meta VARBINARY(32768), IN p_weight DOUBLE)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_gen BIGINT;
    DECLARE v_now DATETIME(6);
    DECLARE v_n INT;
    DECLARE v_status INT DEFAULT 0;
    DECLARE v_inc BIGINT DEFAULT NULL;
    DECLARE v_owner VARBINARY(255) DEFAULT NULL;
    DECLARE v_lease BIGINT DEFAULT NULL;
    DECLARE v_request BIGINT DEFAULT NULL;
    DECLARE v_expires_us BIGINT DEFAULT NULL;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        ROLLBACK;
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    START TRANSACTION;
    CALL sqldlm_group_lock(p_group, v_gen, v_now);
    decide: BEGIN
        SELECT COUNT(*) INTO v_n FROM sqldlm_member_withdrawn WHERE lease_id = p_lease AND request_id = p_request;
        IF v_n > 0 THEN
            SET v_status = 4;
            LEAVE decide;
        END IF;
        -- Swept: the member of that id is live, or its lease was locked
        -- (a renewal in flight may keep it).
        SELECT COUNT(*), MAX(m.lease_id), MAX(m.request_id), MAX(m.incarnation), MAX(l.owner),
               MAX(TIMESTAMPDIFF(MICROSECOND, v_now, l.expires_at))
          INTO v_n, v_lease, v_request, v_inc, v_owner, v_expires_us
          FROM sqldlm_members m LEFT JOIN sqldlm_leases l ON l.id = m.lease_id
         WHERE m.group_name = p_group AND m.member_id = p_member;
        IF v_n > 0 THEN
            IF v_lease = p_lease AND v_request = p_request THEN
                SET v_status = 1, v_owner = NULL, v_lease = NULL, v_request = NULL, v_expires_us = NULL;
            ELSE
                SET v_status = 2;
            END IF;
            LEAVE decide;
        END IF;
        SET v_inc = NULL, v_lease = NULL, v_request = NULL, v_owner = NULL, v_expires_us = NULL;
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now;
        IF v_n = 0 THEN
            SET v_status = 3;
            LEAVE decide;
        END IF;
        UPDATE sqldlm_groups SET generation = generation + 1 WHERE name = p_group;
        SET v_gen = v_gen + 1;
        INSERT INTO sqldlm_members (group_name, member_id, lease_id, request_id, incarnation, meta, weight, joined_at)
        VALUES (p_group, p_member, p_lease, p_request, v_gen, COALESCE(p_meta, ''), p_weight, v_now);
        CALL sqldlm_group_audit('join', p_group, p_member, v_now);
        SET v_status = 1, v_inc = v_gen;
    END decide;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_status AS status, v_inc AS incarnation, v_gen AS generation, v_owner AS owner,
           v_lease AS lease_id, v_request AS request_id, v_expires_us AS expires_in_us;
END
-- +goose StatementEnd

-- sqldlm_group_leave deletes the membership of request (p_lease,
-- p_request) as p_member of p_group and records the request as withdrawn.
-- It returns one row: deleted (1 if a member row was deleted, else 0) and
-- the stored generation after the call.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_group_leave(IN p_group VARBINARY(1024), IN p_member VARBINARY(1024), IN p_lease BIGINT,
                                    IN p_request BIGINT)
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_gen BIGINT;
    DECLARE v_now DATETIME(6);
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
    CALL sqldlm_group_lock(p_group, v_gen, v_now);
    INSERT INTO sqldlm_member_withdrawn (lease_id, request_id, group_name, withdrawn_at)
    VALUES (p_lease, p_request, p_group, v_now)
        ON DUPLICATE KEY UPDATE withdrawn_at = withdrawn_at;
    SELECT COUNT(*) INTO v_n FROM sqldlm_members
     WHERE group_name = p_group AND member_id = p_member AND lease_id = p_lease AND request_id = p_request;
    IF v_n > 0 THEN
        CALL sqldlm_group_audit('leave', p_group, p_member, v_now);
    END IF;
    DELETE FROM sqldlm_members
     WHERE group_name = p_group AND member_id = p_member AND lease_id = p_lease AND request_id = p_request;
    SET v_n = ROW_COUNT();
    IF v_n > 0 THEN
        UPDATE sqldlm_groups SET generation = generation + 1 WHERE name = p_group;
        SET v_gen = v_gen + 1;
    END IF;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n > 0 AS deleted, v_gen AS generation;
END
-- +goose StatementEnd

-- sqldlm_group_set_meta replaces the meta of the live membership of
-- request (p_lease, p_request) as p_member of p_group (even with the same
-- value: the generation moves all the same). It returns one row: updated
-- (1, or 0 if there is no such membership or its lease is not live) and
-- the stored generation after the call.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_group_set_meta(IN p_group VARBINARY(1024), IN p_member VARBINARY(1024), IN p_lease BIGINT,
                                       IN p_request BIGINT, IN p_meta VARBINARY(32768))
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE v_gen BIGINT;
    DECLARE v_now DATETIME(6);
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
    CALL sqldlm_group_lock(p_group, v_gen, v_now);
    SELECT COUNT(*) INTO v_n FROM sqldlm_members
     WHERE group_name = p_group AND member_id = p_member AND lease_id = p_lease AND request_id = p_request;
    IF v_n > 0 THEN
        SELECT COUNT(*) INTO v_n FROM sqldlm_leases
         WHERE id = p_lease AND broken_at IS NULL AND expires_at > v_now;
    END IF;
    IF v_n > 0 THEN
        UPDATE sqldlm_members SET meta = COALESCE(p_meta, '')
         WHERE group_name = p_group AND member_id = p_member;
        CALL sqldlm_group_audit('update', p_group, p_member, v_now);
        UPDATE sqldlm_groups SET generation = generation + 1 WHERE name = p_group;
        SET v_gen = v_gen + 1;
    END IF;
    COMMIT;
    SET time_zone = saved_tz;
    SELECT v_n > 0 AS updated, v_gen AS generation;
END
-- +goose StatementEnd

-- sqldlm_group_members returns two result sets, read from one consistent
-- snapshot at one reading of the clock: the group's generation (one row,
-- one column; 0 for a group nobody joined), then its live members sorted
-- by member_id byte by byte (9 columns).
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_group_members(IN p_group VARBINARY(1024))
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
    SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
    START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;
    SET v_now = SYSDATE(6);
    SELECT COALESCE((SELECT g.generation FROM sqldlm_groups g WHERE g.name = p_group), 0)
           + (SELECT COUNT(*) FROM sqldlm_members m LEFT JOIN sqldlm_leases l ON l.id = m.lease_id
               WHERE m.group_name = p_group AND (l.id IS NULL OR l.broken_at IS NOT NULL)) AS generation;
    SELECT m.member_id,
           l.owner,
           m.lease_id,
           m.request_id,
           m.incarnation,
           m.meta,
           m.weight,
           TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', m.joined_at) AS joined_us,
           TIMESTAMPDIFF(MICROSECOND, v_now, l.expires_at) AS expires_in_us,
           l.expires_at <= v_now AS expired
      FROM sqldlm_members m JOIN sqldlm_leases l ON l.id = m.lease_id
     WHERE m.group_name = p_group AND l.broken_at IS NULL
     ORDER BY m.member_id;
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- sqldlm_group_generation returns sqldlm_group_members' first result set
-- alone (a watcher's poll).
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_group_generation(IN p_group VARBINARY(1024))
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
    SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
    START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;
    SET v_now = SYSDATE(6);
    SELECT COALESCE((SELECT g.generation FROM sqldlm_groups g WHERE g.name = p_group), 0)
           + (SELECT COUNT(*) FROM sqldlm_members m LEFT JOIN sqldlm_leases l ON l.id = m.lease_id
               WHERE m.group_name = p_group AND (l.id IS NULL OR l.broken_at IS NOT NULL)) AS generation,
           (SELECT COUNT(*) FROM sqldlm_members m JOIN sqldlm_leases l ON l.id = m.lease_id
             WHERE m.group_name = p_group AND l.broken_at IS NULL AND l.expires_at <= v_now) AS expired;
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

SET SESSION sql_mode = @sqldlm_saved_sql_mode;
SET @sqldlm_saved_sql_mode = NULL;

-- +goose Down
DELETE FROM sqldlm_audit WHERE event IN ('join', 'leave', 'update') OR (event = 'expire' AND detail = 'member');
ALTER TABLE sqldlm_audit DROP CONSTRAINT sqldlm_audit_event,
    ADD CONSTRAINT sqldlm_audit_event
        CHECK (event IN ('grant', 'upgrade', 'downgrade', 'release', 'takeover', 'expire', 'break'));
DROP PROCEDURE sqldlm_group_sweep;
DROP PROCEDURE sqldlm_group_audit;
DROP PROCEDURE sqldlm_group_generation;
DROP PROCEDURE sqldlm_group_members;
DROP PROCEDURE sqldlm_group_set_meta;
DROP PROCEDURE sqldlm_group_leave;
DROP PROCEDURE sqldlm_group_join;
DROP PROCEDURE sqldlm_group_lock;
DROP VIEW sqldlm_members_view;
DROP TABLE sqldlm_member_withdrawn;
DROP TABLE sqldlm_members;
DROP TABLE sqldlm_groups;
