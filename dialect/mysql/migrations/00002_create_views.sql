-- sqldlm schema version 2 for MySQL 8 and MariaDB 10.6+: read-only views for
-- operators, and the procedures behind the dialect's Inspector (Locks,
-- Leases, Break).
--
-- The views (sqldlm_leases_view, sqldlm_holders_view, sqldlm_waiters_view)
-- are for people at the mysql client; sqldlm itself never reads them. Names,
-- owners and payloads are shown as utf8mb4 text (CAST of the VARBINARY
-- columns), so the client prints them: a filter such as WHERE name = 'x' on
-- a view then compares text under the default utf8mb4 collation (often case-
-- and accent-insensitive); filter the tables for byte-exact matches. Times are
-- the tables' DATETIME(6) values, in UTC. The *_seconds columns and liveness
-- are computed against UTC_TIMESTAMP(6): a view cannot set the session's
-- time_zone (which UTC_TIMESTAMP does not depend on), nor use SYSDATE (which
-- follows it), so the views use the statement's start time, and a session
-- that has SET timestamp sees these human-facing ages and liveness shifted
-- by as much. sqldlm's own decisions never use the views.
--
-- The procedures follow the conventions of version 1 (see its header): they
-- read the clock with SYSDATE(6) under time_zone '+00:00' and put the
-- session's time_zone back in every path, return times and durations as
-- BIGINT microseconds, end their own transactions, and roll back and
-- re-raise on any error. Like every sqldlm procedure but sqldlm_fence, they
-- run their own transactions and are not to be called inside one (their SET
-- TRANSACTION fails with error 1568 while a transaction is in progress).

-- +goose Up
SET @sqldlm_saved_sql_mode = @@session.sql_mode;
SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION';

CREATE VIEW sqldlm_leases_view AS
SELECT l.id AS lease_id,
       CAST(l.owner AS CHAR CHARACTER SET utf8mb4) AS owner,
       l.created_at,
       l.renewed_at,
       l.expires_at,
       ROUND(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), l.expires_at) / 1000000, 3) AS expires_in_seconds,
       (l.broken_at IS NOT NULL) AS broken,
       (l.broken_at IS NULL AND l.expires_at > UTC_TIMESTAMP(6)) AS live,
       (SELECT COUNT(*) FROM sqldlm_holders h WHERE h.lease_id = l.id) AS holds,
       (SELECT COUNT(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id) AS waits
FROM sqldlm_leases l;

CREATE VIEW sqldlm_holders_view AS
SELECT CAST(h.name AS CHAR CHARACTER SET utf8mb4) AS name,
       CAST(l.owner AS CHAR CHARACTER SET utf8mb4) AS owner,
       h.lease_id,
       CASE h.mode WHEN 'X' THEN 'exclusive' ELSE 'shared' END AS mode,
       h.token,
       h.acquired_at,
       ROUND(TIMESTAMPDIFF(MICROSECOND, h.acquired_at, UTC_TIMESTAMP(6)) / 1000000, 3) AS held_seconds,
       ROUND(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), l.expires_at) / 1000000, 3) AS expires_in_seconds,
       COALESCE(l.broken_at IS NULL AND l.expires_at > UTC_TIMESTAMP(6), 0) AS live,
       CAST(h.payload AS CHAR CHARACTER SET utf8mb4) AS payload
FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id;

-- Live waiters only; position counts them per name (byte-wise): pending
-- upgrades first, then arrival order.
CREATE VIEW sqldlm_waiters_view AS
SELECT CAST(w.name AS CHAR CHARACTER SET utf8mb4) AS name,
       CAST(l.owner AS CHAR CHARACTER SET utf8mb4) AS owner,
       w.lease_id,
       CASE w.mode WHEN 'X' THEN 'exclusive' ELSE 'shared' END AS mode,
       (w.upgrade_token IS NOT NULL) AS upgrade,
       w.since,
       ROUND(TIMESTAMPDIFF(MICROSECOND, w.since, UTC_TIMESTAMP(6)) / 1000000, 3) AS waited_seconds,
       ROW_NUMBER() OVER (PARTITION BY w.name ORDER BY w.upgrade_token IS NULL, w.id) AS position
FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
WHERE l.broken_at IS NULL AND l.expires_at > UTC_TIMESTAMP(6);

-- sqldlm_inspect_locks returns two result sets, read from one consistent
-- snapshot: the holds (11 columns), then the live waiters (8 columns), of
-- the names that start with the bytes p_prefix ('' for all; compared byte by
-- byte, no wildcards) and, unless p_owner is '', that p_owner holds or waits
-- for (dead leases included). Holds are ordered by name and token, waiters by
-- name, pending upgrades first, then arrival.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_inspect_locks(IN p_prefix VARBINARY(1024), IN p_owner VARBINARY(1024))
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
    SELECT x.name,
           COALESCE(k.token, 0) AS top_token,
           x.token,
           x.lease_id,
           x.mode,
           TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', x.acquired_at) AS acquired_us,
           TIMESTAMPDIFF(MICROSECOND, x.acquired_at, v_now) AS held_us,
           COALESCE(l.owner, '') AS owner,
           COALESCE(TIMESTAMPDIFF(MICROSECOND, v_now, l.expires_at), 0) AS expires_in_us,
           COALESCE(l.broken_at IS NULL AND l.expires_at > v_now, 0) AS live,
           x.payload
      FROM sqldlm_holders x
      LEFT JOIN sqldlm_leases l ON l.id = x.lease_id
      LEFT JOIN sqldlm_locks k ON k.name = x.name
     WHERE (p_prefix = '' OR LEFT(x.name, LENGTH(p_prefix)) = p_prefix)
       AND (p_owner = '' OR x.name IN (
                SELECT h.name FROM sqldlm_holders h JOIN sqldlm_leases o ON o.id = h.lease_id WHERE o.owner = p_owner
                UNION
                SELECT w.name FROM sqldlm_waiters w JOIN sqldlm_leases o ON o.id = w.lease_id WHERE o.owner = p_owner))
     ORDER BY x.name, x.token;
    SELECT x.name,
           COALESCE(k.token, 0) AS top_token,
           l.owner,
           x.lease_id,
           x.mode,
           (x.upgrade_token IS NOT NULL) AS upgrade,
           TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', x.since) AS since_us,
           TIMESTAMPDIFF(MICROSECOND, x.since, v_now) AS waited_us
      FROM sqldlm_waiters x
      JOIN sqldlm_leases l ON l.id = x.lease_id
      LEFT JOIN sqldlm_locks k ON k.name = x.name
     WHERE l.broken_at IS NULL AND l.expires_at > v_now
       AND (p_prefix = '' OR LEFT(x.name, LENGTH(p_prefix)) = p_prefix)
       AND (p_owner = '' OR x.name IN (
                SELECT h.name FROM sqldlm_holders h JOIN sqldlm_leases o ON o.id = h.lease_id WHERE o.owner = p_owner
                UNION
                SELECT w.name FROM sqldlm_waiters w JOIN sqldlm_leases o ON o.id = w.lease_id WHERE o.owner = p_owner))
     ORDER BY x.name, x.upgrade_token IS NULL, x.id;
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- sqldlm_inspect_leases returns every lease row, live or dead, ordered by
-- owner (byte-wise) and id, with its number of holds and waiters: id, owner,
-- created_us, renewed_us, expires_in_us, broken, live, holds, waits.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_inspect_leases()
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
     ORDER BY l.owner, l.id;
    COMMIT;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- sqldlm_break marks broken (dead at once: broken_at and expires_at set to
-- the server's clock) every live lease that holds p_name, only p_owner's
-- unless it is ''. Its result sets: one row per broken lease, in the columns
-- of sqldlm_inspect_leases, then one row: skipped.
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

-- +goose Down
DROP PROCEDURE sqldlm_break;
DROP PROCEDURE sqldlm_inspect_leases;
DROP PROCEDURE sqldlm_inspect_locks;
DROP VIEW sqldlm_waiters_view;
DROP VIEW sqldlm_holders_view;
DROP VIEW sqldlm_leases_view;
