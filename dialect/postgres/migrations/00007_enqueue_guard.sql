-- sqldlm schema version 7 for PostgreSQL: a request is never queued where
-- no release will wake it.
--
-- Until version 6, sqldlm_acquire decided to queue a request (insert its
-- waiter row) from a snapshot taken before a concurrent release, Reap or
-- DeleteLease committed, while those, which do not lock the name's row when
-- nobody waits, looked for waiters to wake with a snapshot that could not
-- see the uncommitted waiter row. Both missed the other: the waiter was
-- queued behind a hold that no longer existed, or behind a waiter already
-- gone, and nobody woke it. It was let in only by its next poll, which a
-- notified waiter not at the head of the queue makes after up to 2 s; a hot
-- name stood free meanwhile (seen in the benchmark under load, where a
-- 100 ms window counted no grant).
--
-- Now, before it inserts its waiter row (the first enqueue of phase 1, and
-- phase 2), sqldlm_acquire takes sqldlm_enqueue_guard's row locks: FOR SHARE
-- on the name's holds and waiter rows, which conflicts with their deletion
-- and with a Downgrade's update of a hold. Then it decides again with a
-- snapshot taken after those locks. A removal that committed before the
-- locks is seen by the new decision (phase 1 then returns 'blocked' with
-- no holder and nobody ahead, without queuing, and the client asks again
-- at once; phase 2 decides as usual). A removal that comes after waits for
-- this transaction's commit, and then sees the waiter row it wakes or
-- hands over to. (Releases, grants and withdrawals that lock the name's
-- row FOR UPDATE were already serialized with the enqueue; Break and lease
-- expiry are not covered: a waiter learns of those from its expiry timer
-- and its polls.)
--
-- Down drops sqldlm_enqueue_guard and restores version 6's sqldlm_acquire
-- exactly.

-- +goose Up

-- sqldlm_enqueue_guard locks the holds and the waiter rows of a name
-- FOR SHARE, in a fixed order (tokens, then waiter ids), for the rest of
-- the calling transaction.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_enqueue_guard(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM sqldlm_holders WHERE name = p_name ORDER BY token FOR SHARE;
    PERFORM 1 FROM sqldlm_waiters WHERE name = p_name ORDER BY id FOR SHARE;
END
$$;
-- +goose StatementEnd

-- sqldlm_acquire: version 6's, with sqldlm_enqueue_guard's locks and a
-- second decision before a waiter row is inserted.
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
    v_guarded boolean := false;
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
                -- The decision above was made with plain reads. Lock what
                -- keeps this request out (see sqldlm_enqueue_guard), then
                -- decide again with a snapshot taken after those locks.
                PERFORM sqldlm_enqueue_guard(p_name);
                v_now := clock_timestamp();
                SELECT * INTO e FROM sqldlm_evaluate(p_name, p_lease, p_request, p_mode, v_upgrade, v_delay, v_now);
                IF NOT e.lease_live OR e.held_token IS NOT NULL
                   OR (e.blocker_owner IS NULL AND e.waiters_ahead = 0) THEN
                    -- The name moved on since the plain reads: nothing is
                    -- queued, and the client asks again at once (blocked,
                    -- with no holder and nobody ahead).
                    o_status := 'blocked';
                    RETURN;
                END IF;
                IF e.waiter_id IS NULL THEN
                    INSERT INTO sqldlm_waiters (name, lease_id, request_id, mode, upgrade_token, since, payload)
                    VALUES (p_name, p_lease, p_request, p_mode, NULL, clock_timestamp(), v_payload)
                    ON CONFLICT (lease_id, request_id) DO NOTHING;
                END IF;
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
            IF p_enqueue AND e.waiter_id IS NULL AND NOT v_guarded THEN
                -- Lock what keeps this request out (see
                -- sqldlm_enqueue_guard) and decide again with a snapshot
                -- taken after those locks.
                PERFORM sqldlm_enqueue_guard(p_name);
                v_guarded := true;
                CONTINUE;
            END IF;
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

-- +goose Down

-- sqldlm_acquire: version 6's, exactly.
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

DROP FUNCTION sqldlm_enqueue_guard(text);
