-- sqldlm schema version 4 for PostgreSQL: a fast path for uncontended
-- grants, and notifications that wake the head of a name's queue instead of
-- every waiter of the name.
--
-- Fast grant. sqldlm_acquire first checks, with plain reads, that the name
-- has no hold and no waiter at all; then it locks the name's row and its
-- own lease (the same locks, in the same order, as the general path) and
-- checks again with a snapshot and a clock taken after them. If the name is
-- still free it grants with one INSERT of the hold (and its audit row) and
-- the UPDATE of the name's row: no evaluation of conflicting holds,
-- waiters or dead leases, no takeover, no waiter row to delete. Anything
-- else falls through to version 3's logic, unchanged except that a grant
-- deletes its waiter row only if it has one.
--
-- Head wake. Every function that used to pg_notify(sqldlm_channel(), name)
-- now calls sqldlm_wake(name), which sends one notification per waiter at
-- the head of the name's queue, with the payload
-- '<lease id> <request id> <name>': the first live waiter in the order the
-- grants serve them (a pending upgrade first, then by arrival), and, when it
-- is shared, every live shared waiter after it up to the first exclusive
-- one (all of which may be granted together). The client routes the payload
-- to that one request. Waiters further back are not woken: they could not be
-- granted before the head is, and the head's grant and later release wake
-- the next ones in turn. Waiters still poll as a fallback (a missed
-- notification, a waiter row not yet committed when the release ran, a head
-- whose lease dies while it waits).
--
-- Handover. Release (out of the caller's transaction) calls the new
-- sqldlm_release_next, which grants the name to the waiter(s) at the head of
-- the queue in the releasing transaction when nothing else conflicts, and
-- notifies them: their next sqldlm_acquire returns the hold (a repeated
-- request). Waiter rows keep their request's payload (new column
-- sqldlm_waiters.payload) for that grant.
--
-- Down restores version 3's functions exactly, and drops sqldlm_wake,
-- sqldlm_release_next and sqldlm_waiters.payload.

-- +goose Up
-- A waiter keeps the payload of its request, for a grant the release makes
-- on its behalf (sqldlm_release_next).
ALTER TABLE sqldlm_waiters ADD COLUMN payload text NOT NULL DEFAULT '' CHECK (octet_length(payload) <= 1024);

-- sqldlm_wake notifies the live waiters at the head of p_name's queue (see
-- above), in the caller's transaction (so at its commit). A waiter row that
-- the caller's snapshot does not see yet is not notified: it was just
-- refused, and polls again within milliseconds.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_wake(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(sqldlm_channel(), q.lease_id || ' ' || q.request_id || ' ' || p_name)
       FROM (SELECT w.lease_id, w.request_id,
                    row_number() OVER o AS pos,
                    count(*) FILTER (WHERE w.mode = 'X') OVER o AS exclusive
               FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
              WHERE w.name = p_name AND l.broken_at IS NULL AND l.expires_at > clock_timestamp()
             WINDOW o AS (ORDER BY w.upgrade_token IS NULL, w.id ROWS UNBOUNDED PRECEDING)) q
      WHERE q.pos = 1 OR q.exclusive = 0;
END
$$;
-- +goose StatementEnd

-- sqldlm_acquire: version 3's, with the fast path first, and a grant deletes its waiter row only if it has one.
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

-- sqldlm_release: version 3's; wakes the head of the queue.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
BEGIN
    WITH d AS (
        DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name
        RETURNING token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', p_name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, ''
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease)
    SELECT count(*) INTO v_n FROM d;
    IF v_n = 0 THEN
        RETURN false;
    END IF;
    -- Wake the head of the queue, if someone waits: NOTIFY serializes the
    -- commits of every notifying transaction in the database. A waiter whose
    -- row is not yet committed has just been refused and polls again within
    -- milliseconds.
    IF EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name) THEN
        PERFORM sqldlm_wake(p_name);
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd

-- sqldlm_abandon: version 3's; wakes the heads of the names' queues.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_abandon(p_lease bigint, p_request bigint) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_waiting text[];
    v_held    text[];
BEGIN
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request RETURNING name)
    SELECT array_agg(name) INTO v_waiting FROM d;
    WITH d AS (
        DELETE FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request
        RETURNING name, token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, 'abandoned'
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease
         ORDER BY d.token)
    SELECT array_agg(DISTINCT name) INTO v_held FROM d;
    -- A withdrawn waiter may have kept later ones out: wake them too.
    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(v_held || v_waiting) AS n) s;
    RETURN coalesce(v_held, '{}');
END
$$;
-- +goose StatementEnd

-- sqldlm_downgrade: version 3's; wakes the head of the queue (shared waiters may now join).
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_downgrade(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
BEGIN
    -- The lease check reads the statement's snapshot: a renewal committed
    -- meanwhile can only make it fail near expiry (safe), and a takeover only
    -- breaks a lease that has already expired by the clock.
    WITH u AS (
        UPDATE sqldlm_holders SET mode = 'S'
         WHERE token = p_token AND lease_id = p_lease AND name = p_name
           AND EXISTS (SELECT 1 FROM sqldlm_leases
                        WHERE id = p_lease AND broken_at IS NULL AND expires_at > clock_timestamp())
        RETURNING token, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'downgrade', p_name, coalesce(l.owner, ''), p_lease, u.token, 'S', u.payload, ''
          FROM u JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease)
    SELECT count(*) INTO v_n FROM u;
    IF v_n = 0 THEN
        RETURN false;
    END IF;
    PERFORM sqldlm_wake(p_name);
    RETURN true;
END
$$;
-- +goose StatementEnd

-- sqldlm_delete_lease: version 3's; wakes the heads of the names' queues.
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

-- sqldlm_reap: version 3's; wakes the heads of the freed names' queues.
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

-- sqldlm_break: version 3's; wakes the heads of the names' queues.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_break(p_name text, p_owner text)
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
    INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
    SELECT v_now, 'break', h.name, l.owner, h.lease_id, h.token, h.mode, h.payload,
           CASE WHEN h.name = p_name THEN '' ELSE 'with ' || p_name END
      FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
      JOIN sqldlm_settings s ON s.id = 1 AND s.audit
     WHERE h.lease_id = ANY (v_ids)
     ORDER BY h.name <> p_name, l.owner COLLATE "C", h.lease_id, h.token;
    PERFORM sqldlm_wake(s.name) FROM (
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

-- sqldlm_release_next is sqldlm_release (out of the caller's transaction:
-- Release, not ReleaseTx) that also hands the name over: when someone waits,
-- it grants the request at the head of the queue in the same transaction, as
-- that request's own sqldlm_acquire would (same checks, same hold, token and
-- audit rows), and notifies it; the request's next sqldlm_acquire returns
-- that hold (a repeated request). So a handover costs one commit, not two,
-- and the waiter's wake-up is a read. It hands over only to live,
-- non-upgrade waiters at the head, each only if no hold of the name
-- conflicts with it (a dead holder to take over waits for the waiter's own
-- lock delay), shared ones up to the first exclusive one; otherwise, or if
-- nothing was granted, it wakes the head as sqldlm_release does.
--
-- Row locks, in the global order: the name's row FOR UPDATE (before the
-- hold it deletes), then per waiter its lease FOR KEY SHARE and its waiter
-- row FOR UPDATE: a waiter withdrawn meanwhile (sqldlm_abandon deletes the
-- row first) is skipped, and one withdrawn after waits for this commit and
-- then deletes the granted hold with its row.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_release_next(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_n       integer;
    w         record;
    r         record;
    v_granted boolean := false;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name) THEN
        RETURN sqldlm_release(p_name, p_lease, p_token);
    END IF;
    PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
    WITH d AS (
        DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name
        RETURNING token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', p_name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, ''
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease)
    SELECT count(*) INTO v_n FROM d;
    IF v_n = 0 THEN
        RETURN false;
    END IF;
    FOR w IN
        SELECT q.lease_id, q.request_id, q.mode, q.upgrade_token, q.payload
          FROM (SELECT x.id, x.lease_id, x.request_id, x.mode::text AS mode, x.upgrade_token, x.payload,
                       row_number() OVER o AS pos,
                       count(*) FILTER (WHERE x.mode = 'X') OVER o AS exclusive
                  FROM sqldlm_waiters x JOIN sqldlm_leases l ON l.id = x.lease_id
                 WHERE x.name = p_name AND l.broken_at IS NULL AND l.expires_at > clock_timestamp()
                WINDOW o AS (ORDER BY x.upgrade_token IS NULL, x.id ROWS UNBOUNDED PRECEDING)) q
         WHERE q.pos = 1 OR q.exclusive = 0
         ORDER BY q.pos
    LOOP
        EXIT WHEN w.upgrade_token IS NOT NULL
               OR EXISTS (SELECT 1 FROM sqldlm_holders h
                           WHERE h.name = p_name AND (w.mode = 'X' OR h.mode = 'X'));
        PERFORM 1 FROM sqldlm_leases WHERE id = w.lease_id FOR KEY SHARE;
        EXIT WHEN NOT FOUND;
        PERFORM 1 FROM sqldlm_waiters WHERE lease_id = w.lease_id AND request_id = w.request_id FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO r FROM sqldlm_acquire(p_name, w.lease_id, w.request_id, w.mode, true, 0, w.payload, 0);
        EXIT WHEN r.o_status <> 'granted';
        PERFORM pg_notify(sqldlm_channel(), w.lease_id || ' ' || w.request_id || ' ' || p_name);
        v_granted := true;
    END LOOP;
    IF NOT v_granted THEN
        PERFORM sqldlm_wake(p_name);
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- Version 3's functions, as migration 3 created them.
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
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('S', 'X') OR (v_upgrade IS NOT NULL AND p_mode <> 'X') THEN
        RAISE EXCEPTION 'sqldlm_acquire: invalid mode % (upgrade %)', p_mode, p_upgrade
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    o_ahead := 0;

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
            INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since)
            VALUES (p_name, p_lease, p_request, p_mode, NULL, clock_timestamp())
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
                INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since)
                VALUES (p_name, p_lease, p_request, p_mode, v_upgrade, v_now)
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
                INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since)
                VALUES (p_name, p_lease, p_request, p_mode, v_upgrade, v_now)
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
    DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
    o_status := 'granted';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
BEGIN
    WITH d AS (
        DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name
        RETURNING token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', p_name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, ''
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease)
    SELECT count(*) INTO v_n FROM d;
    IF v_n = 0 THEN
        RETURN false;
    END IF;
    -- Notify only if someone waits: NOTIFY serializes the commits of every
    -- notifying transaction in the database. A waiter whose row is not yet
    -- committed has just been refused and polls again within milliseconds.
    IF EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name) THEN
        PERFORM pg_notify(sqldlm_channel(), p_name);
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_abandon(p_lease bigint, p_request bigint) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_waiting text[];
    v_held    text[];
BEGIN
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request RETURNING name)
    SELECT array_agg(name) INTO v_waiting FROM d;
    WITH d AS (
        DELETE FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request
        RETURNING name, token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, 'abandoned'
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease
         ORDER BY d.token)
    SELECT array_agg(DISTINCT name) INTO v_held FROM d;
    -- A withdrawn waiter may have kept later ones out: wake them too.
    PERFORM pg_notify(sqldlm_channel(), n) FROM (SELECT DISTINCT unnest(v_held || v_waiting) AS n) s;
    RETURN coalesce(v_held, '{}');
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_downgrade(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
BEGIN
    -- The lease check reads the statement's snapshot: a renewal committed
    -- meanwhile can only make it fail near expiry (safe), and a takeover only
    -- breaks a lease that has already expired by the clock.
    WITH u AS (
        UPDATE sqldlm_holders SET mode = 'S'
         WHERE token = p_token AND lease_id = p_lease AND name = p_name
           AND EXISTS (SELECT 1 FROM sqldlm_leases
                        WHERE id = p_lease AND broken_at IS NULL AND expires_at > clock_timestamp())
        RETURNING token, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'downgrade', p_name, coalesce(l.owner, ''), p_lease, u.token, 'S', u.payload, ''
          FROM u JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease)
    SELECT count(*) INTO v_n FROM u;
    IF v_n = 0 THEN
        RETURN false;
    END IF;
    PERFORM pg_notify(sqldlm_channel(), p_name);
    RETURN true;
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
    PERFORM pg_notify(sqldlm_channel(), n) FROM (SELECT DISTINCT unnest(v_held || v_waiting) AS n) s;
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

    PERFORM pg_notify(sqldlm_channel(), n) FROM (SELECT DISTINCT unnest(o_freed || v_waiting) AS n) s;
    o_freed := coalesce(o_freed, '{}');
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_break(p_name text, p_owner text)
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
    INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
    SELECT v_now, 'break', h.name, l.owner, h.lease_id, h.token, h.mode, h.payload,
           CASE WHEN h.name = p_name THEN '' ELSE 'with ' || p_name END
      FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
      JOIN sqldlm_settings s ON s.id = 1 AND s.audit
     WHERE h.lease_id = ANY (v_ids)
     ORDER BY h.name <> p_name, l.owner COLLATE "C", h.lease_id, h.token;
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

DROP FUNCTION sqldlm_release_next(text, bigint, bigint);
DROP FUNCTION sqldlm_wake(text);
ALTER TABLE sqldlm_waiters DROP COLUMN payload;
