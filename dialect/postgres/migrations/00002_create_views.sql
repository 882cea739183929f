-- sqldlm schema version 2 for PostgreSQL: read-only views for operators,
-- and sqldlm_break, an operator's forced end of the leases holding a name.
--
-- The views show the same columns as SQLite's: times as timestamptz, ages and
-- remaining times as numeric seconds (3 decimals) computed from
-- clock_timestamp(), read once per query (a materialized CTE), so that every
-- row and column of one query agree on "now". sqldlm itself never reads them.
-- Like version 1, everything is created in the current schema.

-- +goose Up
CREATE VIEW sqldlm_leases_view AS
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT l.id AS lease_id,
       l.owner,
       l.created_at,
       l.renewed_at,
       l.expires_at,
       round(extract(epoch FROM l.expires_at - c.now)::numeric, 3) AS expires_in_seconds,
       l.broken_at IS NOT NULL AS broken,
       (l.broken_at IS NULL AND l.expires_at > c.now) AS live,
       (SELECT count(*) FROM sqldlm_holders h WHERE h.lease_id = l.id) AS holds,
       (SELECT count(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id) AS waits
FROM sqldlm_leases l CROSS JOIN c;

-- Holds of dead leases are shown (live = false) until a takeover or the
-- reaper deletes them.
CREATE VIEW sqldlm_holders_view AS
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT h.name,
       l.owner,
       h.lease_id,
       CASE h.mode WHEN 'X' THEN 'exclusive' ELSE 'shared' END AS mode,
       h.token,
       h.acquired_at,
       round(extract(epoch FROM c.now - h.acquired_at)::numeric, 3) AS held_seconds,
       round(extract(epoch FROM l.expires_at - c.now)::numeric, 3) AS expires_in_seconds,
       coalesce(l.broken_at IS NULL AND l.expires_at > c.now, false) AS live,
       h.payload
FROM sqldlm_holders h CROSS JOIN c LEFT JOIN sqldlm_leases l ON l.id = h.lease_id;

-- Live waiters only, position 1 first: pending upgrades, then arrival order.
CREATE VIEW sqldlm_waiters_view AS
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT w.name,
       l.owner,
       w.lease_id,
       CASE w.mode WHEN 'X' THEN 'exclusive' ELSE 'shared' END AS mode,
       w.upgrade_token IS NOT NULL AS upgrade,
       w.since,
       round(extract(epoch FROM c.now - w.since)::numeric, 3) AS waited_seconds,
       row_number() OVER (PARTITION BY w.name ORDER BY w.upgrade_token IS NULL, w.id) AS position
FROM sqldlm_waiters w CROSS JOIN c JOIN sqldlm_leases l ON l.id = w.lease_id
WHERE l.broken_at IS NULL AND l.expires_at > c.now;

-- sqldlm_break marks broken (dead at once) every live lease that holds
-- p_name, only those of p_owner unless it is '', and returns them, sorted by
-- owner (byte-wise) then id, with the clock it judged them by (o_now).
--
-- It takes only lease row locks: FOR NO KEY UPDATE, in id order, as a
-- takeover does (step 2 of the lock order in version 1); renewals of those
-- leases wait, then find them broken. A fenced transaction's FOR KEY SHARE
-- does not conflict: its holder learns of the break at its next Fence or
-- renewal. The decision is taken after the locks, with a fresh snapshot
-- (READ COMMITTED) and clock: a lease renewed by then is still live and is
-- broken; one that released the name meanwhile is spared.
--
-- A broken lease loses every hold it has, and its waiter rows no longer
-- keep anyone out, so every name it holds or waits for (p_name included) is
-- notified, at commit, for waiters to retry at once.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_break(p_name text, p_owner text)
RETURNS TABLE (o_id bigint, o_owner text, o_created_at timestamptz, o_renewed_at timestamptz,
    o_expires_at timestamptz, o_holds bigint, o_waits bigint, o_now timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
    v_now timestamptz;
BEGIN
    SELECT array_agg(s.id) INTO v_ids FROM (
        SELECT l.id FROM sqldlm_leases l
         WHERE l.id IN (SELECT h.lease_id FROM sqldlm_holders h WHERE h.name = p_name)
           AND (p_owner = '' OR l.owner = p_owner)
           AND l.broken_at IS NULL AND l.expires_at > clock_timestamp()
         ORDER BY l.id
           FOR NO KEY UPDATE OF l) s;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    v_now := clock_timestamp();
    WITH b AS (
        UPDATE sqldlm_leases l SET broken_at = v_now, expires_at = least(l.expires_at, v_now)
         WHERE l.id = ANY (v_ids)
           AND l.broken_at IS NULL AND l.expires_at > v_now
           AND EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.lease_id = l.id AND h.name = p_name)
        RETURNING l.id)
    SELECT array_agg(b.id) INTO v_ids FROM b;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    PERFORM pg_notify(sqldlm_channel(), s.name) FROM (
        SELECT h.name FROM sqldlm_holders h WHERE h.lease_id = ANY (v_ids)
        UNION
        SELECT w.name FROM sqldlm_waiters w WHERE w.lease_id = ANY (v_ids)) s;
    RETURN QUERY
    SELECT l.id, l.owner, l.created_at, l.renewed_at, l.expires_at,
           (SELECT count(*) FROM sqldlm_holders h WHERE h.lease_id = l.id),
           (SELECT count(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id),
           v_now
      FROM sqldlm_leases l
     WHERE l.id = ANY (v_ids)
     ORDER BY l.owner COLLATE "C", l.id;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION sqldlm_break(text, text);
DROP VIEW sqldlm_waiters_view;
DROP VIEW sqldlm_holders_view;
DROP VIEW sqldlm_leases_view;
