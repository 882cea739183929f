-- sqldlm schema version 11 for PostgreSQL: Reap moves to a new failover
-- epoch before it deletes anything.
--
-- Found by TestFailoverJepsenPostgres/async (holder checker: a grant
-- returned before the holder of a reaped lease knew it was gone). After an
-- asynchronous standby is promoted, its copy of a lease can be older than
-- the lease its holder trusts: renewals the old primary acknowledged after
-- the standby last received its WAL are lost. With the replication stream
-- cut for longer than the TTL, every lease looks expired on the new
-- primary. The epoch change (version 8) freezes grants for the longest TTL
-- of the leases it finds, and runs at the first statement that calls
-- sqldlm_current_epoch. sqldlm_reap did not call it: a reaper that reached
-- the new primary first deleted those leases, and the epoch change that
-- followed found none of them and froze grants for the TTL of whatever
-- lease was left, down to nothing, while their holders still trusted them.
--
-- sqldlm_reap now runs sqldlm_current_epoch first, so the epoch change, if
-- one is due, sees every lease before anything is deleted. Reaping during
-- the freeze is harmless: nothing is granted until it ends.
--
-- Down restores version 10's sqldlm_reap exactly.

-- +goose Up

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_reap(p_limit integer, p_idle_us bigint, OUT o_leases integer, OUT o_holds integer, OUT o_waiters integer, OUT o_idle_locks integer, OUT o_freed text[], OUT o_audit_rows integer)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_ids       bigint[];
    v_names     text[];
    v_waiting   text[];
    v_now       timestamptz;
    v_audit     boolean;
    v_retention bigint;
BEGIN
    -- The failover epoch first, as every grant and renewal does: on a newly
    -- promoted primary the epoch change's freeze is the longest TTL of the
    -- leases it finds, so it must find them before this reap deletes the
    -- ones that look expired here (see the header of migration 00011).
    PERFORM sqldlm_current_epoch();
    SELECT array_agg(id) INTO v_ids FROM (
        SELECT id FROM sqldlm_leases
         WHERE broken_at IS NOT NULL OR expires_at <= clock_timestamp()
         ORDER BY expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED) s;
    -- Re-check after the locks (no renewal can commit now).
    v_now := clock_timestamp();
    SELECT array_agg(id) INTO v_ids FROM sqldlm_leases
     WHERE id = ANY (v_ids) AND (broken_at IS NOT NULL OR expires_at <= v_now);
    SELECT audit, audit_retention_us INTO v_audit, v_retention FROM sqldlm_settings WHERE id = 1;
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = ANY (v_ids) RETURNING name, lease_id, token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT v_now, 'expire', d.name, coalesce(l.owner, ''), d.lease_id, d.token, d.mode, d.payload, ''
          FROM d LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
         WHERE coalesce(v_audit, false)
         ORDER BY d.token)
    SELECT count(*), array_agg(DISTINCT name) INTO o_holds, o_freed FROM d;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = ANY (v_ids) RETURNING name)
    SELECT count(*), array_agg(DISTINCT name) INTO o_waiters, v_waiting FROM d;
    DELETE FROM sqldlm_leases WHERE id = ANY (v_ids);
    GET DIAGNOSTICS o_leases = ROW_COUNT;
    -- Pending records of leases now gone: those just deleted, and any left
    -- behind. A record locked by an open transaction (which deleted it) is
    -- skipped rather than waited for.
    DELETE FROM sqldlm_pending p
     WHERE (p.lease_id, p.request_id) IN (
        SELECT q.lease_id, q.request_id FROM sqldlm_pending q
         WHERE NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = q.lease_id)
           FOR UPDATE SKIP LOCKED);
    -- Withdrawal records of the leases just deleted, and up to p_limit
    -- others older than an hour (dialect.WithdrawnRetention): no statement
    -- of their requests can still be running (each lock wait of one is
    -- bounded by its lock_timeout). Records another transaction has locked
    -- are skipped.
    DELETE FROM sqldlm_withdrawn WHERE lease_id = ANY (v_ids);
    DELETE FROM sqldlm_withdrawn w
     WHERE (w.lease_id, w.request_id) IN (
        SELECT x.lease_id, x.request_id FROM sqldlm_withdrawn x
         WHERE x.withdrawn_at < v_now - interval '1 hour'
         ORDER BY x.withdrawn_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED);

    -- Idle lock rows. Holds of a name are only inserted under its row's
    -- lock, so once we hold it a fresh snapshot shows them all.
    SELECT array_agg(name) INTO v_names FROM (
        SELECT k.name FROM sqldlm_locks k
         WHERE k.updated_at < v_now - p_idle_us * interval '1 microsecond'
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = k.name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = k.name)
         ORDER BY k.updated_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED) s;
    DELETE FROM sqldlm_locks k
     WHERE k.name = ANY (v_names)
       AND k.updated_at < v_now - p_idle_us * interval '1 microsecond'
       AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = k.name)
       AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = k.name);
    GET DIAGNOSTICS o_idle_locks = ROW_COUNT;

    -- Audit rows past the retention, oldest first, whether or not audit is
    -- on now.
    DELETE FROM sqldlm_audit a
     WHERE a.id IN (
        SELECT b.id FROM sqldlm_audit b
         WHERE b.at < v_now - v_retention * interval '1 microsecond'
         ORDER BY b.at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS o_audit_rows = ROW_COUNT;

    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(o_freed || v_waiting) AS n) s;
    o_freed := coalesce(o_freed, '{}');
END
$function$;
-- +goose StatementEnd

-- +goose Down

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_reap(p_limit integer, p_idle_us bigint, OUT o_leases integer, OUT o_holds integer, OUT o_waiters integer, OUT o_idle_locks integer, OUT o_freed text[], OUT o_audit_rows integer)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_ids       bigint[];
    v_names     text[];
    v_waiting   text[];
    v_now       timestamptz;
    v_audit     boolean;
    v_retention bigint;
BEGIN
    SELECT array_agg(id) INTO v_ids FROM (
        SELECT id FROM sqldlm_leases
         WHERE broken_at IS NOT NULL OR expires_at <= clock_timestamp()
         ORDER BY expires_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED) s;
    -- Re-check after the locks (no renewal can commit now).
    v_now := clock_timestamp();
    SELECT array_agg(id) INTO v_ids FROM sqldlm_leases
     WHERE id = ANY (v_ids) AND (broken_at IS NOT NULL OR expires_at <= v_now);
    SELECT audit, audit_retention_us INTO v_audit, v_retention FROM sqldlm_settings WHERE id = 1;
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = ANY (v_ids) RETURNING name, lease_id, token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT v_now, 'expire', d.name, coalesce(l.owner, ''), d.lease_id, d.token, d.mode, d.payload, ''
          FROM d LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
         WHERE coalesce(v_audit, false)
         ORDER BY d.token)
    SELECT count(*), array_agg(DISTINCT name) INTO o_holds, o_freed FROM d;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = ANY (v_ids) RETURNING name)
    SELECT count(*), array_agg(DISTINCT name) INTO o_waiters, v_waiting FROM d;
    DELETE FROM sqldlm_leases WHERE id = ANY (v_ids);
    GET DIAGNOSTICS o_leases = ROW_COUNT;
    -- Pending records of leases now gone: those just deleted, and any left
    -- behind. A record locked by an open transaction (which deleted it) is
    -- skipped rather than waited for.
    DELETE FROM sqldlm_pending p
     WHERE (p.lease_id, p.request_id) IN (
        SELECT q.lease_id, q.request_id FROM sqldlm_pending q
         WHERE NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = q.lease_id)
           FOR UPDATE SKIP LOCKED);
    -- Withdrawal records of the leases just deleted, and up to p_limit
    -- others older than an hour (dialect.WithdrawnRetention): no statement
    -- of their requests can still be running (each lock wait of one is
    -- bounded by its lock_timeout). Records another transaction has locked
    -- are skipped.
    DELETE FROM sqldlm_withdrawn WHERE lease_id = ANY (v_ids);
    DELETE FROM sqldlm_withdrawn w
     WHERE (w.lease_id, w.request_id) IN (
        SELECT x.lease_id, x.request_id FROM sqldlm_withdrawn x
         WHERE x.withdrawn_at < v_now - interval '1 hour'
         ORDER BY x.withdrawn_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED);

    -- Idle lock rows. Holds of a name are only inserted under its row's
    -- lock, so once we hold it a fresh snapshot shows them all.
    SELECT array_agg(name) INTO v_names FROM (
        SELECT k.name FROM sqldlm_locks k
         WHERE k.updated_at < v_now - p_idle_us * interval '1 microsecond'
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = k.name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = k.name)
         ORDER BY k.updated_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED) s;
    DELETE FROM sqldlm_locks k
     WHERE k.name = ANY (v_names)
       AND k.updated_at < v_now - p_idle_us * interval '1 microsecond'
       AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = k.name)
       AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = k.name);
    GET DIAGNOSTICS o_idle_locks = ROW_COUNT;

    -- Audit rows past the retention, oldest first, whether or not audit is
    -- on now.
    DELETE FROM sqldlm_audit a
     WHERE a.id IN (
        SELECT b.id FROM sqldlm_audit b
         WHERE b.at < v_now - v_retention * interval '1 microsecond'
         ORDER BY b.at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS o_audit_rows = ROW_COUNT;

    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(o_freed || v_waiting) AS n) s;
    o_freed := coalesce(o_freed, '{}');
END
$function$;
-- +goose StatementEnd
