-- sqldlm schema version 6 for PostgreSQL: a withdrawal is final, and every
-- lock wait of an acquire is bounded.
--
-- Until version 5, sqldlm_abandon deleted a request's waiter row and holds,
-- but a statement of that request still on its way, or waiting in the
-- server for the name's row (behind a caller's open sqldlm_acquire_tx
-- transaction, with its client's cancel request lost), could commit a hold
-- or a waiter row afterwards, under the live lease, for a request nobody
-- waits for any more.
--
-- Withdrawal record. sqldlm_abandon(name, lease, request, keep) now records
-- the withdrawal in the new table sqldlm_withdrawn, keyed by (lease id,
-- request id), while it holds the name's row FOR UPDATE (created if
-- missing). Every statement of sqldlm_acquire that inserts a hold or a
-- waiter row (the fast path and phase 2, after the name's row FOR UPDATE; the
-- first enqueue of phase 1, after the name's row FOR KEY SHARE, which
-- conflicts with Abandon's FOR UPDATE but not with other enqueues) checks
-- the record once it holds those locks and its own lease FOR KEY SHARE,
-- before anything else, and answers
-- 'withdrawn' without writing; phase 1 checks it too (a plain read) before
-- a repeated request could return the hold it obtained. So a statement of
-- the request either committed before the withdrawal (whose deletes, with a
-- snapshot taken after the name's row lock, see its rows) or sees the
-- record. sqldlm_release_next grants only waiter rows it finds under the
-- name's row lock, and a withdrawn request has none by then and can get
-- none. With p_keep (the withdrawal of an upgrade, whose hold replaced the
-- caller's shared hold) the hold the request obtained is kept and its token
-- returned. Records are deleted with their lease (sqldlm_delete_lease,
-- sqldlm_reap of dead leases) and by sqldlm_reap once older than an hour.
--
-- Bounded waits. sqldlm_acquire and sqldlm_abandon run with lock_timeout
-- 1s (a SET clause of the function, restored when it returns, so a caller's
-- transaction that runs sqldlm_acquire_tx keeps its own setting): a lock
-- wait that lasts longer fails with SQLSTATE 55P03, which the client
-- retries.
--
-- A takeover refused because a fence pins the dead holder's hold reports
-- o_expires_us NULL (unknown) instead of 0.
--
-- Version 5's sqldlm_abandon(bigint, bigint) is left in place, unchanged,
-- for clients of version 5 still running while the schema is migrated.
-- Down restores version 5 exactly: it drops the new sqldlm_abandon and
-- sqldlm_withdrawn, and restores version 4's (unchanged in 5)
-- sqldlm_acquire, sqldlm_delete_lease and sqldlm_reap.

-- +goose Up
-- One row per withdrawn request, while its lease lives (at most an hour).
CREATE TABLE sqldlm_withdrawn (
    lease_id     bigint      NOT NULL,
    request_id   bigint      NOT NULL,
    name         text COLLATE "C" NOT NULL,       -- the name the request asked for
    withdrawn_at timestamptz NOT NULL,            -- clock_timestamp() of the withdrawal
    PRIMARY KEY (lease_id, request_id)
);
CREATE INDEX sqldlm_withdrawn_at ON sqldlm_withdrawn (withdrawn_at); -- sqldlm_reap's retention

-- sqldlm_abandon withdraws the request (p_lease, p_request) of p_name for
-- good: it records the withdrawal (see above), deletes the request's waiter
-- row and, unless p_keep, its holds (with their 'release' audit rows,
-- detail 'abandoned'), and wakes the heads of the names' queues. o_freed
-- lists the names of the holds it deleted; o_kept is the token of the hold
-- it kept (p_keep), NULL if there is none.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_abandon(p_name text, p_lease bigint, p_request bigint, p_keep boolean,
    OUT o_freed text[], OUT o_kept bigint)
LANGUAGE plpgsql
SET lock_timeout = '1s'
AS $$
DECLARE
    v_waiting text[];
BEGIN
    -- (1) The name's row, created if missing (as sqldlm_acquire does): every
    -- statement that grants or queues a request of the name holds it FOR
    -- UPDATE while it checks the withdrawal record and writes, so it has
    -- either committed already (its rows are deleted below) or waits for
    -- this transaction and then sees the record.
    LOOP
        PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, clock_timestamp())
        ON CONFLICT (name) DO NOTHING;
    END LOOP;
    -- (2) The own lease, so that it is not deleted under the record. A lease
    -- already gone needs no record: a request of it is refused anyway.
    PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR KEY SHARE;
    IF FOUND THEN
        INSERT INTO sqldlm_withdrawn (lease_id, request_id, name, withdrawn_at)
        VALUES (p_lease, p_request, p_name, clock_timestamp())
        ON CONFLICT (lease_id, request_id) DO NOTHING;
    END IF;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request RETURNING name)
    SELECT array_agg(name) INTO v_waiting FROM d;
    IF p_keep THEN
        SELECT token INTO o_kept FROM sqldlm_holders
         WHERE lease_id = p_lease AND request_id = p_request
         ORDER BY token DESC
         LIMIT 1;
    ELSE
        WITH d AS (
            DELETE FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request
            RETURNING name, token, mode, payload),
        a AS (
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, 'abandoned'
              FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
              LEFT JOIN sqldlm_leases l ON l.id = p_lease
             ORDER BY d.token)
        SELECT array_agg(DISTINCT name) INTO o_freed FROM d;
    END IF;
    -- A withdrawn waiter may have kept later ones out: wake them too.
    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(o_freed || v_waiting) AS n) s;
    o_freed := coalesce(o_freed, '{}');
END
$$;
-- +goose StatementEnd

-- sqldlm_acquire: version 4's, run with lock_timeout 1s; it refuses a withdrawn request
-- (fast path and phase 2 after their locks, phase 1 with a plain read), a first
-- enqueue locks the name's row FOR KEY SHARE and checks again before it inserts
-- its waiter row, and a takeover refused because a fence pins a hold reports
-- o_expires_us NULL.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_acquire(p_name text, p_lease bigint, p_request bigint, p_mode text,
    p_enqueue boolean, p_upgrade bigint, p_payload text, p_delay_us bigint,
    OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text,
    OUT o_expires_us bigint, OUT o_ahead integer,
    OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[],
    OUT o_took_modes text[], OUT o_took_expires timestamptz[], OUT o_took_broken boolean[],
    OUT o_took_payloads text[])
LANGUAGE plpgsql
SET lock_timeout = '1s'
AS $$
DECLARE
    v_upgrade bigint := nullif(p_upgrade, 0);
    v_delay   interval := greatest(coalesce(p_delay_us, 0), 0) * interval '1 microsecond';
    v_payload text := coalesce(p_payload, '');
    v_now     timestamptz;
    e         record;
    v_dead    bigint[];
    v_locked  bigint[] := '{}';
    v_pinned  bigint;
    v_audit   boolean;
    v_owner   text;
    v_live    boolean;
    v_busy    boolean;
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('S', 'X') OR (v_upgrade IS NOT NULL AND p_mode <> 'X') THEN
        RAISE EXCEPTION 'sqldlm_acquire: invalid mode % (upgrade %)', p_mode, p_upgrade
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    o_ahead := 0;

    -- Fast path: a name with no hold and no waiter at all (the common,
    -- uncontended case). Lock the name's row, then the own lease, then look
    -- again with a snapshot and a clock taken after both locks: a withdrawn
    -- request is refused; still no hold or waiter of the name, and no hold
    -- of this request (a repeat), means a plain grant, with nothing to take
    -- over and no waiter row to delete. Otherwise fall through to the
    -- general path below, which takes the same locks again (a no-op) and
    -- decides as before.
    IF v_upgrade IS NULL
       AND NOT EXISTS (SELECT 1 FROM sqldlm_holders WHERE name = p_name)
       AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name) THEN
        LOOP
            PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, clock_timestamp())
            ON CONFLICT (name) DO NOTHING;
        END LOOP;
        PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR KEY SHARE;
        IF NOT FOUND THEN
            o_status := 'lease_lost';
            RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request) THEN
            o_status := 'withdrawn';
            RETURN;
        END IF;
        v_now := clock_timestamp();
        SELECT l.broken_at IS NULL AND l.expires_at > v_now, l.owner, coalesce(s.audit, false),
               EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = p_name)
               OR EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = p_name)
               OR EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.lease_id = p_lease AND h.request_id = p_request)
          INTO v_live, v_owner, v_audit, v_busy
          FROM sqldlm_leases l LEFT JOIN sqldlm_settings s ON s.id = 1
         WHERE l.id = p_lease;
        IF NOT coalesce(v_live, false) THEN
            o_status := 'lease_lost';
            RETURN;
        END IF;
        IF NOT v_busy THEN
            INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
            VALUES (p_name, p_lease, p_request, p_mode, v_now, v_payload)
            RETURNING token INTO o_token;
            IF v_audit THEN
                INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                VALUES (v_now, 'grant', p_name, v_owner, p_lease, o_token, p_mode, v_payload, '');
            END IF;
            UPDATE sqldlm_locks SET token = o_token, updated_at = v_now WHERE name = p_name;
            o_status := 'granted';
            RETURN;
        END IF;
    END IF;

    -- Phase 1: plain reads. A withdrawn request is refused first, before
    -- a repeat of it could return the hold it obtained (an upgrade's
    -- withdrawal keeps it). A withdrawal that commits after this read is
    -- seen by phase 2, which checks again after its locks.
    IF EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request) THEN
        o_status := 'withdrawn';
        RETURN;
    END IF;
    v_now := clock_timestamp();
    SELECT * INTO e FROM sqldlm_evaluate(p_name, p_lease, p_request, p_mode, v_upgrade, v_delay, v_now);
    IF NOT e.lease_live THEN
        o_status := 'lease_lost';
        RETURN;
    ELSIF e.held_token IS NOT NULL THEN -- a repeated request returns its hold
        o_status := 'granted';
        o_token := e.held_token;
        RETURN;
    ELSIF NOT e.upgrade_held THEN
        o_status := 'not_held';
        RETURN;
    ELSIF e.upgrade_conflict THEN
        o_status := 'upgrade_conflict';
        RETURN;
    ELSIF e.blocker_owner IS NOT NULL OR e.waiters_ahead > 0 THEN
        IF NOT p_enqueue OR e.waiter_id IS NOT NULL THEN
            o_status := 'blocked';
            o_owner := e.blocker_owner; o_mode := e.blocker_mode; o_expires_us := e.blocker_expires_us;
            o_ahead := e.waiters_ahead;
            RETURN;
        END IF;
        IF v_upgrade IS NULL THEN
            -- First enqueue. The name's row FOR KEY SHARE serializes it
            -- with sqldlm_abandon (FOR UPDATE) without holding up other
            -- enqueues: a withdrawal committed before is seen by the check
            -- below (a new snapshot, taken after the lock), and one that
            -- commits after deletes the row inserted here. Locking the own
            -- lease makes a concurrent DeleteLease or Reap either see the
            -- new waiter row or have deleted the lease before. Without a
            -- name's row (collected meanwhile), phase 2 creates it.
            PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR KEY SHARE;
            IF FOUND THEN
                PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR KEY SHARE;
                IF NOT FOUND THEN
                    o_status := 'lease_lost';
                    RETURN;
                END IF;
                IF EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request) THEN
                    o_status := 'withdrawn';
                    RETURN;
                END IF;
                INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since, payload)
                VALUES (p_name, p_lease, p_request, p_mode, NULL, clock_timestamp(), v_payload)
                ON CONFLICT (lease_id, request_id) DO NOTHING;
                o_status := 'blocked';
                o_owner := e.blocker_owner; o_mode := e.blocker_mode; o_expires_us := e.blocker_expires_us;
                o_ahead := e.waiters_ahead;
                RETURN;
            END IF;
        END IF;
        -- The first enqueue of an upgrade goes through phase 2: serialized
        -- on the name's row, of two holders upgrading at once exactly one is
        -- queued and the other refused.
    END IF;

    -- Phase 2. (1) The name's row, created if missing. INSERT waits for a
    -- concurrent insert of the name, then does nothing; the next SELECT (a
    -- new snapshot) finds whichever row won. The loop repeats only if Reap
    -- deleted that row in between.
    LOOP
        PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, clock_timestamp())
        ON CONFLICT (name) DO NOTHING;
    END LOOP;
    -- (2) The own lease, so that it cannot be deleted under the grant or
    -- the new waiter row (its liveness is checked below, after all the
    -- locks).
    PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR KEY SHARE;
    IF NOT FOUND THEN
        o_status := 'lease_lost';
        RETURN;
    END IF;
    -- A withdrawal of this request committed before we got the name's row
    -- is final: nothing is granted or queued.
    IF EXISTS (SELECT 1 FROM sqldlm_withdrawn WHERE lease_id = p_lease AND request_id = p_request) THEN
        o_status := 'withdrawn';
        RETURN;
    END IF;
    -- (3) Decide with a snapshot and a clock taken after every lock the
    -- decision depends on: lock the leases of conflicting holds that look
    -- dead, then look again, until no unlocked lease looks dead. Holds of
    -- the name are inserted only under its row's lock, so the snapshot shows
    -- them all; and a concurrent run of this same request has committed.
    LOOP
        v_now := clock_timestamp();
        SELECT * INTO e FROM sqldlm_evaluate(p_name, p_lease, p_request, p_mode, v_upgrade, v_delay, v_now);
        IF NOT e.lease_live THEN
            o_status := 'lease_lost';
            RETURN;
        ELSIF e.held_token IS NOT NULL THEN
            o_status := 'granted';
            o_token := e.held_token;
            RETURN;
        ELSIF NOT e.upgrade_held THEN
            o_status := 'not_held';
            RETURN;
        ELSIF e.upgrade_conflict THEN
            o_status := 'upgrade_conflict';
            RETURN;
        ELSIF e.blocker_owner IS NOT NULL OR e.waiters_ahead > 0 THEN
            IF p_enqueue AND e.waiter_id IS NULL THEN
                INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since, payload)
                VALUES (p_name, p_lease, p_request, p_mode, v_upgrade, v_now, v_payload)
                ON CONFLICT (lease_id, request_id) DO NOTHING;
            END IF;
            o_status := 'blocked';
            o_owner := e.blocker_owner; o_mode := e.blocker_mode; o_expires_us := e.blocker_expires_us;
            o_ahead := e.waiters_ahead;
            RETURN;
        END IF;
        v_dead := e.dead_leases;
        EXIT WHEN v_dead IS NULL OR v_dead <@ v_locked;
        -- FOR NO KEY UPDATE conflicts with a renewal's UPDATE (which then
        -- re-checks expires_at after we commit) but not with the FOR KEY
        -- SHARE of the lease's own grants and fences.
        PERFORM 1 FROM sqldlm_leases WHERE id = ANY (v_dead) AND id <> ALL (v_locked) ORDER BY id FOR NO KEY UPDATE;
        v_locked := v_locked || v_dead;
    END LOOP;

    IF v_dead IS NOT NULL THEN
        -- Lock the holds to take over without waiting: a fenced transaction
        -- pins a hold (FOR KEY SHARE) until it ends, which may be as late as
        -- its idle timeout. Waiting for it here would leave the statement
        -- running in the server after its caller gave up, to commit a grant
        -- nobody receives; instead the request is blocked and retries.
        SELECT count(*) INTO v_pinned FROM sqldlm_holders
         WHERE name = p_name AND lease_id = ANY (v_dead);
        SELECT v_pinned - count(*) INTO v_pinned FROM (
            SELECT 1 FROM sqldlm_holders
             WHERE name = p_name AND lease_id = ANY (v_dead)
               FOR UPDATE SKIP LOCKED) s;
        IF v_pinned > 0 THEN
            -- How long the fence pins the hold is unknown: o_expires_us
            -- stays NULL (not 0, which would read as "free now").
            SELECT l.owner, h.mode::text INTO o_owner, o_mode
              FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
             WHERE h.name = p_name AND h.lease_id = ANY (v_dead)
             ORDER BY h.mode DESC
             LIMIT 1;
            IF p_enqueue AND e.waiter_id IS NULL THEN
                INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since, payload)
                VALUES (p_name, p_lease, p_request, p_mode, v_upgrade, v_now, v_payload)
                ON CONFLICT (lease_id, request_id) DO NOTHING;
            END IF;
            o_status := 'blocked';
            RETURN;
        END IF;
    END IF;

    -- Granted. Nothing was written before this point. The audit setting,
    -- and the own lease's owner for the audit rows (the lease is locked).
    SELECT coalesce(s.audit, false), coalesce(l.owner, '') INTO v_audit, v_owner
      FROM (SELECT 1) AS one
      LEFT JOIN sqldlm_settings s ON s.id = 1
      LEFT JOIN sqldlm_leases l ON l.id = p_lease;
    IF v_upgrade IS NOT NULL THEN
        DELETE FROM sqldlm_holders WHERE token = v_upgrade AND lease_id = p_lease AND name = p_name
        RETURNING CASE WHEN v_payload = '' THEN payload ELSE v_payload END INTO v_payload;
        IF NOT FOUND THEN -- released meanwhile (a release does not lock the name's row)
            o_status := 'not_held';
            RETURN;
        END IF;
    END IF;
    -- Delete the dead leases' holds of the name, and conflicting holds whose
    -- lease row is gone (they count as dead too), and report the conflicting
    -- ones with their leases as they were before this grant (the leases are
    -- locked, and marked broken only below). Every deleted hold gets a
    -- takeover row.
    WITH d AS (
        DELETE FROM sqldlm_holders h
         WHERE h.name = p_name
           AND (h.lease_id = ANY (v_dead)
                OR (h.token IS DISTINCT FROM v_upgrade
                    AND (p_mode = 'X' OR h.mode = 'X')
                    AND NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = h.lease_id)))
        RETURNING h.token, h.lease_id, h.mode, h.payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT v_now, 'takeover', p_name, coalesce(l.owner, ''), d.lease_id, d.token, d.mode, d.payload, 'by ' || v_owner
          FROM d LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
         WHERE v_audit
         ORDER BY d.token)
    SELECT array_agg(coalesce(l.owner, '') ORDER BY d.token), array_agg(d.lease_id ORDER BY d.token),
           array_agg(d.token ORDER BY d.token), array_agg(d.mode::text ORDER BY d.token),
           array_agg(coalesce(l.expires_at, 'epoch'::timestamptz) ORDER BY d.token),
           array_agg(l.broken_at IS NOT NULL ORDER BY d.token), array_agg(d.payload ORDER BY d.token)
      INTO o_took_owners, o_took_leases, o_took_tokens, o_took_modes, o_took_expires, o_took_broken,
           o_took_payloads
      FROM d LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
     WHERE p_mode = 'X' OR d.mode = 'X';
    IF v_dead IS NOT NULL THEN
        -- Mark the dead leases broken, so that no late renewal revives them.
        UPDATE sqldlm_leases SET broken_at = v_now WHERE id = ANY (v_dead) AND broken_at IS NULL;
    END IF;
    INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
    VALUES (p_name, p_lease, p_request, p_mode, v_now, v_payload)
    RETURNING token INTO o_token;
    IF v_audit THEN
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        VALUES (v_now, CASE WHEN v_upgrade IS NULL THEN 'grant' ELSE 'upgrade' END, p_name, v_owner, p_lease,
                o_token, p_mode, v_payload, CASE WHEN v_upgrade IS NULL THEN '' ELSE 'from token ' || v_upgrade END);
    END IF;
    UPDATE sqldlm_locks SET token = o_token, updated_at = v_now WHERE name = p_name;
    IF e.waiter_id IS NOT NULL THEN
        DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
    END IF;
    o_status := 'granted';
END
$$;
-- +goose StatementEnd

-- sqldlm_delete_lease: version 4's; also deletes the lease's withdrawal records.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_delete_lease(p_lease bigint) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_held    text[];
    v_waiting text[];
BEGIN
    -- Lock the lease first: grants, takeovers and fences of it lock it before
    -- its holds too, and wait for, or are refused after, this deletion.
    PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR UPDATE;
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = p_lease RETURNING name, token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, 'lease closed'
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease
         ORDER BY d.token)
    SELECT array_agg(DISTINCT name) INTO v_held FROM d;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = p_lease RETURNING name)
    SELECT array_agg(DISTINCT name) INTO v_waiting FROM d;
    DELETE FROM sqldlm_pending WHERE lease_id = p_lease;
    DELETE FROM sqldlm_withdrawn WHERE lease_id = p_lease;
    DELETE FROM sqldlm_leases WHERE id = p_lease;
    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(v_held || v_waiting) AS n) s;
    RETURN coalesce(v_held, '{}');
END
$$;
-- +goose StatementEnd

-- sqldlm_reap: version 4's; also deletes the withdrawal records of the leases it
-- deletes, and up to p_limit records older than an hour.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_reap(p_limit integer, p_idle_us bigint,
    OUT o_leases integer, OUT o_holds integer, OUT o_waiters integer, OUT o_idle_locks integer,
    OUT o_freed text[], OUT o_audit_rows integer)
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION sqldlm_abandon(text, bigint, bigint, boolean);

-- Version 4's functions, as migration 4 created them.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_acquire(p_name text, p_lease bigint, p_request bigint, p_mode text,
    p_enqueue boolean, p_upgrade bigint, p_payload text, p_delay_us bigint,
    OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text,
    OUT o_expires_us bigint, OUT o_ahead integer,
    OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[],
    OUT o_took_modes text[], OUT o_took_expires timestamptz[], OUT o_took_broken boolean[],
    OUT o_took_payloads text[])
LANGUAGE plpgsql AS $$
DECLARE
    v_upgrade bigint := nullif(p_upgrade, 0);
    v_delay   interval := greatest(coalesce(p_delay_us, 0), 0) * interval '1 microsecond';
    v_payload text := coalesce(p_payload, '');
    v_now     timestamptz;
    e         record;
    v_dead    bigint[];
    v_locked  bigint[] := '{}';
    v_pinned  bigint;
    v_audit   boolean;
    v_owner   text;
    v_live    boolean;
    v_busy    boolean;
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('S', 'X') OR (v_upgrade IS NOT NULL AND p_mode <> 'X') THEN
        RAISE EXCEPTION 'sqldlm_acquire: invalid mode % (upgrade %)', p_mode, p_upgrade
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    o_ahead := 0;

    -- Fast path: a name with no hold and no waiter at all (the common,
    -- uncontended case). Lock the name's row, then the own lease, then look
    -- again with a snapshot and a clock taken after both locks: still no
    -- hold or waiter of the name, and no hold of this request (a repeat),
    -- means a plain grant, with nothing to take over and no waiter row to
    -- delete. Otherwise fall through to the general path below, which
    -- takes the same locks again (a no-op) and decides as before.
    IF v_upgrade IS NULL
       AND NOT EXISTS (SELECT 1 FROM sqldlm_holders WHERE name = p_name)
       AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name) THEN
        LOOP
            PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, clock_timestamp())
            ON CONFLICT (name) DO NOTHING;
        END LOOP;
        PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR KEY SHARE;
        IF NOT FOUND THEN
            o_status := 'lease_lost';
            RETURN;
        END IF;
        v_now := clock_timestamp();
        SELECT l.broken_at IS NULL AND l.expires_at > v_now, l.owner, coalesce(s.audit, false),
               EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = p_name)
               OR EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = p_name)
               OR EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.lease_id = p_lease AND h.request_id = p_request)
          INTO v_live, v_owner, v_audit, v_busy
          FROM sqldlm_leases l LEFT JOIN sqldlm_settings s ON s.id = 1
         WHERE l.id = p_lease;
        IF NOT coalesce(v_live, false) THEN
            o_status := 'lease_lost';
            RETURN;
        END IF;
        IF NOT v_busy THEN
            INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
            VALUES (p_name, p_lease, p_request, p_mode, v_now, v_payload)
            RETURNING token INTO o_token;
            IF v_audit THEN
                INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                VALUES (v_now, 'grant', p_name, v_owner, p_lease, o_token, p_mode, v_payload, '');
            END IF;
            UPDATE sqldlm_locks SET token = o_token, updated_at = v_now WHERE name = p_name;
            o_status := 'granted';
            RETURN;
        END IF;
    END IF;

    -- Phase 1: one plain read.
    v_now := clock_timestamp();
    SELECT * INTO e FROM sqldlm_evaluate(p_name, p_lease, p_request, p_mode, v_upgrade, v_delay, v_now);
    IF NOT e.lease_live THEN
        o_status := 'lease_lost';
        RETURN;
    ELSIF e.held_token IS NOT NULL THEN -- a repeated request returns its hold
        o_status := 'granted';
        o_token := e.held_token;
        RETURN;
    ELSIF NOT e.upgrade_held THEN
        o_status := 'not_held';
        RETURN;
    ELSIF e.upgrade_conflict THEN
        o_status := 'upgrade_conflict';
        RETURN;
    ELSIF e.blocker_owner IS NOT NULL OR e.waiters_ahead > 0 THEN
        IF NOT p_enqueue OR e.waiter_id IS NOT NULL THEN
            o_status := 'blocked';
            o_owner := e.blocker_owner; o_mode := e.blocker_mode; o_expires_us := e.blocker_expires_us;
            o_ahead := e.waiters_ahead;
            RETURN;
        END IF;
        IF v_upgrade IS NULL THEN
            -- First enqueue. Locking the own lease makes a concurrent
            -- DeleteLease or Reap either see the new waiter row or have
            -- deleted the lease before (then the request's lease is lost).
            PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR KEY SHARE;
            IF NOT FOUND THEN
                o_status := 'lease_lost';
                RETURN;
            END IF;
            INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since, payload)
            VALUES (p_name, p_lease, p_request, p_mode, NULL, clock_timestamp(), v_payload)
            ON CONFLICT (lease_id, request_id) DO NOTHING;
            o_status := 'blocked';
            o_owner := e.blocker_owner; o_mode := e.blocker_mode; o_expires_us := e.blocker_expires_us;
            o_ahead := e.waiters_ahead;
            RETURN;
        END IF;
        -- The first enqueue of an upgrade goes through phase 2: serialized on
        -- the name's row, of two holders upgrading at once exactly one is
        -- queued and the other refused.
    END IF;

    -- Phase 2. (1) The name's row, created if missing. INSERT waits for a
    -- concurrent insert of the name, then does nothing; the next SELECT (a
    -- new snapshot) finds whichever row won. The loop repeats only if Reap
    -- deleted that row in between.
    LOOP
        PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO sqldlm_locks (name, token, updated_at) VALUES (p_name, 0, clock_timestamp())
        ON CONFLICT (name) DO NOTHING;
    END LOOP;
    -- (2) The own lease, so that it cannot be deleted under the grant (its
    -- liveness is checked below, after all the locks).
    PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR KEY SHARE;
    IF NOT FOUND THEN
        o_status := 'lease_lost';
        RETURN;
    END IF;
    -- (3) Decide with a snapshot and a clock taken after every lock the
    -- decision depends on: lock the leases of conflicting holds that look
    -- dead, then look again, until no unlocked lease looks dead. Holds of
    -- the name are inserted only under its row's lock, so the snapshot shows
    -- them all; and a concurrent run of this same request has committed.
    LOOP
        v_now := clock_timestamp();
        SELECT * INTO e FROM sqldlm_evaluate(p_name, p_lease, p_request, p_mode, v_upgrade, v_delay, v_now);
        IF NOT e.lease_live THEN
            o_status := 'lease_lost';
            RETURN;
        ELSIF e.held_token IS NOT NULL THEN
            o_status := 'granted';
            o_token := e.held_token;
            RETURN;
        ELSIF NOT e.upgrade_held THEN
            o_status := 'not_held';
            RETURN;
        ELSIF e.upgrade_conflict THEN
            o_status := 'upgrade_conflict';
            RETURN;
        ELSIF e.blocker_owner IS NOT NULL OR e.waiters_ahead > 0 THEN
            IF p_enqueue AND e.waiter_id IS NULL THEN
                INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since, payload)
                VALUES (p_name, p_lease, p_request, p_mode, v_upgrade, v_now, v_payload)
                ON CONFLICT (lease_id, request_id) DO NOTHING;
            END IF;
            o_status := 'blocked';
            o_owner := e.blocker_owner; o_mode := e.blocker_mode; o_expires_us := e.blocker_expires_us;
            o_ahead := e.waiters_ahead;
            RETURN;
        END IF;
        v_dead := e.dead_leases;
        EXIT WHEN v_dead IS NULL OR v_dead <@ v_locked;
        -- FOR NO KEY UPDATE conflicts with a renewal's UPDATE (which then
        -- re-checks expires_at after we commit) but not with the FOR KEY
        -- SHARE of the lease's own grants and fences.
        PERFORM 1 FROM sqldlm_leases WHERE id = ANY (v_dead) AND id <> ALL (v_locked) ORDER BY id FOR NO KEY UPDATE;
        v_locked := v_locked || v_dead;
    END LOOP;

    IF v_dead IS NOT NULL THEN
        -- Lock the holds to take over without waiting: a fenced transaction
        -- pins a hold (FOR KEY SHARE) until it ends, which may be as late as
        -- its idle timeout. Waiting for it here would leave the statement
        -- running in the server after its caller gave up, to commit a grant
        -- nobody receives; instead the request is blocked and retries.
        SELECT count(*) INTO v_pinned FROM sqldlm_holders
         WHERE name = p_name AND lease_id = ANY (v_dead);
        SELECT v_pinned - count(*) INTO v_pinned FROM (
            SELECT 1 FROM sqldlm_holders
             WHERE name = p_name AND lease_id = ANY (v_dead)
               FOR UPDATE SKIP LOCKED) s;
        IF v_pinned > 0 THEN
            SELECT l.owner, h.mode::text, 0 INTO o_owner, o_mode, o_expires_us
              FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
             WHERE h.name = p_name AND h.lease_id = ANY (v_dead)
             ORDER BY h.mode DESC
             LIMIT 1;
            IF p_enqueue AND e.waiter_id IS NULL THEN
                INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since, payload)
                VALUES (p_name, p_lease, p_request, p_mode, v_upgrade, v_now, v_payload)
                ON CONFLICT (lease_id, request_id) DO NOTHING;
            END IF;
            o_status := 'blocked';
            RETURN;
        END IF;
    END IF;

    -- Granted. Nothing was written before this point. The audit setting,
    -- and the own lease's owner for the audit rows (the lease is locked).
    SELECT coalesce(s.audit, false), coalesce(l.owner, '') INTO v_audit, v_owner
      FROM (SELECT 1) AS one
      LEFT JOIN sqldlm_settings s ON s.id = 1
      LEFT JOIN sqldlm_leases l ON l.id = p_lease;
    IF v_upgrade IS NOT NULL THEN
        DELETE FROM sqldlm_holders WHERE token = v_upgrade AND lease_id = p_lease AND name = p_name
        RETURNING CASE WHEN v_payload = '' THEN payload ELSE v_payload END INTO v_payload;
        IF NOT FOUND THEN -- released meanwhile (a release does not lock the name's row)
            o_status := 'not_held';
            RETURN;
        END IF;
    END IF;
    -- Delete the dead leases' holds of the name, and conflicting holds whose
    -- lease row is gone (they count as dead too), and report the conflicting
    -- ones with their leases as they were before this grant (the leases are
    -- locked, and marked broken only below). Every deleted hold gets a
    -- takeover row.
    WITH d AS (
        DELETE FROM sqldlm_holders h
         WHERE h.name = p_name
           AND (h.lease_id = ANY (v_dead)
                OR (h.token IS DISTINCT FROM v_upgrade
                    AND (p_mode = 'X' OR h.mode = 'X')
                    AND NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = h.lease_id)))
        RETURNING h.token, h.lease_id, h.mode, h.payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT v_now, 'takeover', p_name, coalesce(l.owner, ''), d.lease_id, d.token, d.mode, d.payload, 'by ' || v_owner
          FROM d LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
         WHERE v_audit
         ORDER BY d.token)
    SELECT array_agg(coalesce(l.owner, '') ORDER BY d.token), array_agg(d.lease_id ORDER BY d.token),
           array_agg(d.token ORDER BY d.token), array_agg(d.mode::text ORDER BY d.token),
           array_agg(coalesce(l.expires_at, 'epoch'::timestamptz) ORDER BY d.token),
           array_agg(l.broken_at IS NOT NULL ORDER BY d.token), array_agg(d.payload ORDER BY d.token)
      INTO o_took_owners, o_took_leases, o_took_tokens, o_took_modes, o_took_expires, o_took_broken,
           o_took_payloads
      FROM d LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
     WHERE p_mode = 'X' OR d.mode = 'X';
    IF v_dead IS NOT NULL THEN
        -- Mark the dead leases broken, so that no late renewal revives them.
        UPDATE sqldlm_leases SET broken_at = v_now WHERE id = ANY (v_dead) AND broken_at IS NULL;
    END IF;
    INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
    VALUES (p_name, p_lease, p_request, p_mode, v_now, v_payload)
    RETURNING token INTO o_token;
    IF v_audit THEN
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        VALUES (v_now, CASE WHEN v_upgrade IS NULL THEN 'grant' ELSE 'upgrade' END, p_name, v_owner, p_lease,
                o_token, p_mode, v_payload, CASE WHEN v_upgrade IS NULL THEN '' ELSE 'from token ' || v_upgrade END);
    END IF;
    UPDATE sqldlm_locks SET token = o_token, updated_at = v_now WHERE name = p_name;
    IF e.waiter_id IS NOT NULL THEN
        DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
    END IF;
    o_status := 'granted';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_delete_lease(p_lease bigint) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_held    text[];
    v_waiting text[];
BEGIN
    -- Lock the lease first: grants, takeovers and fences of it lock it before
    -- its holds too, and wait for, or are refused after, this deletion.
    PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR UPDATE;
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = p_lease RETURNING name, token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, 'lease closed'
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease
         ORDER BY d.token)
    SELECT array_agg(DISTINCT name) INTO v_held FROM d;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = p_lease RETURNING name)
    SELECT array_agg(DISTINCT name) INTO v_waiting FROM d;
    DELETE FROM sqldlm_pending WHERE lease_id = p_lease;
    DELETE FROM sqldlm_leases WHERE id = p_lease;
    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(v_held || v_waiting) AS n) s;
    RETURN coalesce(v_held, '{}');
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_reap(p_limit integer, p_idle_us bigint,
    OUT o_leases integer, OUT o_holds integer, OUT o_waiters integer, OUT o_idle_locks integer,
    OUT o_freed text[], OUT o_audit_rows integer)
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd

DROP TABLE sqldlm_withdrawn;
