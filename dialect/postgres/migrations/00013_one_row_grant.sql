-- sqldlm schema version 13 for PostgreSQL: the uncontended exclusive grant
-- keeps its hold in the name's row of sqldlm_locks (docs/one-row-design.md).
--
-- Until version 12 every hold was a row of sqldlm_holders: a grant inserted
-- a heap row and three index entries, a release deleted them, and vacuum
-- cleaned up after both. For an uncontended exclusive pair that was most of
-- what the pair cost beyond its two commits. Now the fast grant of
-- sqldlm_acquire writes the hold into the columns x_lease, x_request,
-- x_mode, x_since and x_payload of the name's row (its token is the row's),
-- and the release clears x_lease: two updates of one row that change no
-- indexed column, so both are heap-only (HOT) updates.
--
-- The representation:
--   * A name has an inline hold iff x_lease IS NOT NULL. It is then the
--     name's only hold (the name has no row in sqldlm_holders), of either
--     mode, and its token is sqldlm_locks.token. x_request, x_mode, x_since
--     and x_payload mean nothing while x_lease is NULL (a release clears
--     x_lease alone).
--   * Only the fast grant writes a hold inline. Everything else (a second
--     shared hold, upgrades, takeovers, handovers, TryLockTx's grants)
--     writes sqldlm_holders, as before.
--   * sqldlm_spill(name, lease, token) moves an inline hold to
--     sqldlm_holders (same token, request, time and payload). The general
--     path of sqldlm_acquire locks the name's row FOR UPDATE anyway and
--     spills first, so the rest of it (takeovers of
--     dead holds, fenced holds answered blocked, handovers) is unchanged;
--     Downgrade spills its own hold before it changes the mode; the client
--     spills a hold before it fences it (Fence pins the hold's row in
--     sqldlm_holders, as before); sqldlm_acquire_tx spills its grant, so
--     that a hold pending in the caller's transaction is a row as before.
--   * Release, SetPayload and Abandon change an inline hold in place, or
--     the row of sqldlm_holders otherwise. sqldlm_enqueue_guard also locks
--     the name's row FOR SHARE when it has an inline hold: that hold's
--     release (an update of the row) then waits for the queuing
--     transaction, as the delete of a hold row waits for its FOR SHARE.
--   * DeleteLease, Reap, Break and the two-argument sqldlm_abandon (old
--     clients) find inline holds by lease with a scan of sqldlm_locks:
--     none of the new columns is indexed (an index on x_lease would make
--     every grant and release update every index of the row again). Reap
--     scans only in passes that found dead leases.
--   * The view sqldlm_holds is every hold, of either kind, with the columns
--     of sqldlm_holders; sqldlm_holders_view and sqldlm_leases_view read it.
--     The roles granted SELECT on sqldlm_holders_view get SELECT on it.
--
-- No live hold moves: the holds there are stay rows of sqldlm_holders, and
-- grants from now on may go inline. Down moves every inline hold to
-- sqldlm_holders, drops the view, sqldlm_spill and the columns, and restores
-- version 12's functions and views exactly.

-- +goose Up

ALTER TABLE sqldlm_locks
    ADD COLUMN x_lease bigint,
    ADD COLUMN x_request bigint,
    ADD COLUMN x_mode character(1) CONSTRAINT sqldlm_locks_x_mode_check CHECK (x_mode IN ('S', 'X')),
    ADD COLUMN x_since timestamptz,
    ADD COLUMN x_payload text CONSTRAINT sqldlm_locks_x_payload_check CHECK (octet_length(x_payload) <= 1024);

CREATE VIEW sqldlm_holds AS
SELECT h.token, h.name, h.lease_id, h.request_id, h.mode, h.acquired_at, h.payload
  FROM sqldlm_holders h
UNION ALL
SELECT k.token, k.name, k.x_lease, k.x_request, k.x_mode, k.x_since, coalesce(k.x_payload, '')
  FROM sqldlm_locks k
 WHERE k.x_lease IS NOT NULL;

-- +goose StatementBegin
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT a.grantee
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid = 'sqldlm_holders_view'::regclass AND a.grantee <> c.relowner
           AND a.privilege_type = 'SELECT'
    LOOP
        EXECUTE format('GRANT SELECT ON sqldlm_holds TO %s',
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- sqldlm_spill moves an inline hold of p_name to sqldlm_holders. With
-- p_lease NULL (the general path of sqldlm_acquire) it locks the name's row
-- FOR UPDATE, moves whatever inline hold the row has, and returns whether
-- the name has a row. Otherwise (the holder's own Downgrade and Fence) it
-- moves only the hold of p_lease with token p_token, and returns whether
-- it did: its update of the row takes no lock stronger than an update's,
-- so it does not wait for requests being queued at the name (FOR KEY
-- SHARE), and the old values it needs are those the update leaves alone.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_spill(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
LANGUAGE plpgsql
SET lock_timeout = '1s'
AS $$
DECLARE
    k record;
BEGIN
    IF p_lease IS NOT NULL THEN
        UPDATE sqldlm_locks SET x_lease = NULL
         WHERE name = p_name AND x_lease = p_lease AND token = p_token
        RETURNING x_request, x_mode, x_since, x_payload INTO k;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        INSERT INTO sqldlm_holders (token, name, lease_id, request_id, mode, acquired_at, payload)
        OVERRIDING SYSTEM VALUE
        VALUES (p_token, p_name, p_lease, k.x_request, k.x_mode, k.x_since, coalesce(k.x_payload, ''));
        RETURN true;
    END IF;
    SELECT x_lease, x_request, x_mode, x_since, x_payload, token INTO k
      FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF k.x_lease IS NOT NULL THEN
        INSERT INTO sqldlm_holders (token, name, lease_id, request_id, mode, acquired_at, payload)
        OVERRIDING SYSTEM VALUE
        VALUES (k.token, p_name, k.x_lease, k.x_request, k.x_mode, k.x_since, coalesce(k.x_payload, ''));
        UPDATE sqldlm_locks SET x_lease = NULL WHERE name = p_name;
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd

-- sqldlm_acquire: version 12's, with the fast grant into the name's row and
-- the general path's lock of the name's row through sqldlm_spill.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_acquire(p_name text, p_lease bigint, p_request bigint, p_mode text, p_enqueue boolean, p_upgrade bigint, p_payload text, p_delay_us bigint, OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text, OUT o_expires_us bigint, OUT o_ahead integer, OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[], OUT o_took_modes text[], OUT o_took_expires timestamp with time zone[], OUT o_took_broken boolean[], OUT o_took_payloads text[])
 RETURNS record
 LANGUAGE plpgsql
 SET lock_timeout TO '1s'
AS $function$
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
    v_guarded boolean := false;
    v_epoch   bigint;
    v_freeze  timestamptz;
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('S', 'X') OR (v_upgrade IS NOT NULL AND p_mode <> 'X') THEN
        RAISE EXCEPTION 'sqldlm_acquire: invalid mode % (upgrade %)', p_mode, p_upgrade
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    o_ahead := 0;

    -- The failover epoch (sqldlm_current_epoch: a plain read of its row
    -- unless this server's timeline changed). A lease of an older epoch was
    -- created or last renewed before a failover: it is lost, whatever its
    -- expiry says. After an epoch change nothing is granted (nor queued)
    -- until the freeze ends: by then every holder of the older epoch has
    -- stopped trusting its locks, and every lease of that epoch has
    -- expired. The answer is 'blocked' by '(failover)', expiring when the
    -- freeze ends.
    SELECT * INTO v_epoch, v_freeze FROM sqldlm_current_epoch();
    v_now := clock_timestamp();

    -- Fast path (version 13): one statement grants a request of a name with
    -- no hold and no waiter (the common, uncontended case), or changes
    -- nothing. The hold goes into the name's row (x_lease, x_request,
    -- x_mode, x_since, x_payload; its token is the row's), an update that
    -- changes no indexed column. The statement pins the own lease (FOR KEY SHARE,
    -- as before: a DeleteLease waits for the grant, or has deleted the
    -- lease and nothing is granted), then claims the name's row with an
    -- UPDATE whose WHERE holds only if the row's version is the one this
    -- statement's snapshot read (n.xmin = s.seen), that version has no
    -- inline hold, and that snapshot shows no hold and no waiter of the
    -- name, no hold of this request and no withdrawal of it. The UPDATE
    -- takes the row's lock; if another transaction updated the row
    -- meanwhile, PostgreSQL re-checks the WHERE on the newest version,
    -- whose xmin differs, and nothing is granted. Every transaction that
    -- writes a hold of a name (a grant of either kind, a handover, a spill)
    -- or records a withdrawal of a request of it updates the name's row
    -- under its lock (the token, the inline hold, or in sqldlm_abandon a
    -- no-op update), so a fast grant either saw its commit or fails; one
    -- that only locked the row changed nothing the decision depends on. A
    -- fast path that changes nothing falls through to the general path
    -- below, which decides as before. The token comes from the holds'
    -- identity sequence, drawn by the UPDATE (again when it re-checks a
    -- changed row), so a name's tokens grow in the order of its grants.
    -- The lease is checked again with a clock read after every lock (the
    -- UPDATE may have waited for the row), and a grant to a lease that
    -- expired meanwhile is cleared again before anyone could see it.
    IF v_upgrade IS NULL AND v_freeze <= v_now THEN
        WITH l AS (
            SELECT l.id FROM sqldlm_leases l
             WHERE l.id = p_lease AND l.epoch = v_epoch AND l.broken_at IS NULL
               AND l.expires_at > clock_timestamp()
               FOR KEY SHARE)
        UPDATE sqldlm_locks n
           SET token = nextval(pg_get_serial_sequence('sqldlm_holders', 'token')),
               x_lease = p_lease, x_request = p_request, x_mode = p_mode, x_since = clock_timestamp(),
               x_payload = v_payload
          FROM l, (SELECT k.xmin AS seen FROM sqldlm_locks k WHERE k.name = p_name) s
         WHERE n.name = p_name
           AND n.xmin = s.seen
           AND n.x_lease IS NULL
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = p_name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = p_name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.lease_id = p_lease AND h.request_id = p_request)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_withdrawn x WHERE x.lease_id = p_lease AND x.request_id = p_request)
        RETURNING n.token, n.x_since INTO o_token, v_now;
        IF o_token IS NOT NULL THEN
            SELECT l.broken_at IS NULL AND l.expires_at > clock_timestamp(), l.owner, coalesce(s.audit, false)
              INTO v_live, v_owner, v_audit
              FROM sqldlm_leases l LEFT JOIN sqldlm_settings s ON s.id = 1
             WHERE l.id = p_lease;
            IF NOT coalesce(v_live, false) THEN
                UPDATE sqldlm_locks SET x_lease = NULL WHERE name = p_name;
                o_token := NULL;
                o_status := 'lease_lost';
                RETURN;
            END IF;
            IF v_audit THEN
                INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                VALUES (v_now, 'grant', p_name, v_owner, p_lease, o_token, p_mode, v_payload, '');
            END IF;
            o_status := 'granted';
            RETURN;
        END IF;
        v_now := clock_timestamp();
    END IF;

    IF NOT EXISTS (SELECT 1 FROM sqldlm_leases WHERE id = p_lease AND epoch = v_epoch) THEN
        o_status := 'lease_lost';
        RETURN;
    END IF;
    IF v_freeze > v_now THEN
        o_status := 'blocked';
        o_owner := '(failover)';
        o_mode := 'X';
        o_expires_us := ceil(extract(epoch FROM v_freeze - v_now) * 1000000)::bigint;
        RETURN;
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
        -- It writes nothing else, and a commit that wrote nothing does not
        -- wait for a synchronous standby (nor does one that only assigned
        -- a transaction id): a transactional WAL message makes this
        -- commit write a record, after the grant's, which the standby
        -- must confirm before the answer goes out.
        PERFORM pg_logical_emit_message(true, 'sqldlm', '');
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

    -- Phase 2. (1) The name's row, locked FOR UPDATE and created if
    -- missing, with its inline hold, if any, moved to sqldlm_holders
    -- (sqldlm_spill), so that everything below sees every hold as a row of
    -- sqldlm_holders. INSERT waits for a concurrent insert of the name, then
    -- does nothing; the next SELECT (a new snapshot) finds whichever row
    -- won. The loop repeats only if Reap deleted that row in between.
    LOOP
        EXIT WHEN sqldlm_spill(p_name, NULL, NULL);
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
            PERFORM pg_logical_emit_message(true, 'sqldlm', ''); -- as in phase 1
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
$function$;
-- +goose StatementEnd

-- sqldlm_evaluate: version 12's, with the inline hold among the name's holds.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_evaluate(p_name text, p_lease bigint, p_request bigint, p_mode text, p_upgrade bigint, p_delay interval, p_now timestamp with time zone)
 RETURNS TABLE(lease_live boolean, held_token bigint, waiter_id bigint, upgrade_held boolean, upgrade_conflict boolean, blocker_owner text, blocker_mode text, blocker_expires_us bigint, waiters_ahead integer, dead_leases bigint[])
 LANGUAGE sql
 STABLE
AS $function$
WITH hs AS (
    SELECT h.token, h.lease_id, h.mode FROM sqldlm_holders h WHERE h.name = p_name
    UNION ALL
    SELECT k.token, k.x_lease, k.x_mode FROM sqldlm_locks k WHERE k.name = p_name AND k.x_lease IS NOT NULL)
SELECT
    coalesce((SELECT l.broken_at IS NULL AND l.expires_at > p_now FROM sqldlm_leases l WHERE l.id = p_lease), false),
    coalesce((SELECT h.token FROM sqldlm_holders h WHERE h.lease_id = p_lease AND h.request_id = p_request LIMIT 1),
             (SELECT k.token FROM sqldlm_locks k
               WHERE k.name = p_name AND k.x_lease = p_lease AND k.x_request = p_request)),
    own.id,
    p_upgrade IS NULL OR EXISTS (SELECT 1 FROM hs h WHERE h.token = p_upgrade AND h.lease_id = p_lease),
    p_upgrade IS NOT NULL AND EXISTS (
        SELECT 1 FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
         WHERE w.name = p_name AND w.upgrade_token IS NOT NULL AND w.upgrade_token <> p_upgrade
           AND l.broken_at IS NULL AND l.expires_at > p_now),
    b.owner,
    b.mode,
    b.expires_us,
    CASE WHEN p_upgrade IS NOT NULL THEN 0 ELSE (
        SELECT count(*)::integer FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
         WHERE w.name = p_name
           AND l.broken_at IS NULL AND l.expires_at > p_now
           AND NOT (w.lease_id = p_lease AND w.request_id = p_request)
           AND (w.upgrade_token IS NOT NULL
                OR ((p_mode = 'X' OR w.mode = 'X') AND w.id < coalesce(own.id, 9223372036854775807)))) END,
    (SELECT array_agg(DISTINCT h.lease_id ORDER BY h.lease_id)
       FROM hs h JOIN sqldlm_leases l ON l.id = h.lease_id
      WHERE h.token IS DISTINCT FROM p_upgrade
        AND (p_mode = 'X' OR h.mode = 'X')
        AND NOT (l.broken_at IS NULL AND l.expires_at > p_now)
        AND least(l.expires_at, coalesce(l.broken_at, l.expires_at)) + p_delay <= p_now)
FROM (SELECT 1) AS one
LEFT JOIN sqldlm_waiters own ON own.lease_id = p_lease AND own.request_id = p_request
LEFT JOIN LATERAL (
    SELECT t.owner, t.mode, ceil(extract(epoch FROM t.until - p_now) * 1000000)::bigint AS expires_us
      FROM (SELECT l.owner, h.mode::text AS mode,
                   CASE WHEN l.broken_at IS NULL AND l.expires_at > p_now THEN l.expires_at
                        ELSE least(l.expires_at, coalesce(l.broken_at, l.expires_at)) + p_delay END AS until
              FROM hs h JOIN sqldlm_leases l ON l.id = h.lease_id
             WHERE h.token IS DISTINCT FROM p_upgrade
               AND (p_mode = 'X' OR h.mode = 'X')) t
     WHERE t.until > p_now
     ORDER BY t.until DESC
     LIMIT 1) AS b ON true
$function$;
-- +goose StatementEnd

-- sqldlm_enqueue_guard: version 12's, and the name's row FOR SHARE when it
-- has an inline hold.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_enqueue_guard(p_name text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM 1 FROM sqldlm_locks WHERE name = p_name AND x_lease IS NOT NULL FOR SHARE;
    PERFORM 1 FROM sqldlm_holders WHERE name = p_name ORDER BY token FOR SHARE;
    PERFORM 1 FROM sqldlm_waiters WHERE name = p_name ORDER BY id FOR SHARE;
END
$function$;
-- +goose StatementEnd

-- sqldlm_acquire_tx: version 12's, with a fast grant moved to sqldlm_holders.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_acquire_tx(p_name text, p_lease bigint, p_request bigint, p_mode text, p_payload text, p_delay_us bigint, OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text, OUT o_expires_us bigint, OUT o_ahead integer, OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[], OUT o_took_modes text[], OUT o_took_expires timestamp with time zone[], OUT o_took_broken boolean[], OUT o_took_payloads text[])
 RETURNS record
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'sqldlm_acquire_tx: the transaction runs at %; it must run at READ COMMITTED (sql.TxOptions{Isolation: sql.LevelReadCommitted})',
            upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'SQD01';
    END IF;
    SELECT a.o_status, a.o_token, a.o_owner, a.o_mode, a.o_expires_us, a.o_ahead,
           a.o_took_owners, a.o_took_leases, a.o_took_tokens, a.o_took_modes, a.o_took_expires,
           a.o_took_broken, a.o_took_payloads
      INTO o_status, o_token, o_owner, o_mode, o_expires_us, o_ahead,
           o_took_owners, o_took_leases, o_took_tokens, o_took_modes, o_took_expires,
           o_took_broken, o_took_payloads
      FROM sqldlm_acquire(p_name, p_lease, p_request, p_mode, false, NULL, p_payload, p_delay_us) a;
    IF o_status = 'granted' THEN
        -- A hold pending in the caller's transaction is a row of
        -- sqldlm_holders (version 13), as before: the fast grant's hold
        -- moves there from the name's row, which the grant's update has
        -- locked already (sqldlm_spill's FOR UPDATE would also keep the
        -- name's waiters from queuing until the caller's transaction ends).
        INSERT INTO sqldlm_holders (token, name, lease_id, request_id, mode, acquired_at, payload)
        OVERRIDING SYSTEM VALUE
        SELECT k.token, k.name, k.x_lease, k.x_request, k.x_mode, k.x_since, coalesce(k.x_payload, '')
          FROM sqldlm_locks k
         WHERE k.name = p_name AND k.x_lease = p_lease AND k.token = o_token;
        IF FOUND THEN
            UPDATE sqldlm_locks SET x_lease = NULL WHERE name = p_name;
        END IF;
        DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
    END IF;
END
$function$;
-- +goose StatementEnd

-- sqldlm_release: the inline hold, else the row of sqldlm_holders.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release(p_name text, p_lease bigint, p_token bigint)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_mode    text;
    v_payload text;
    v_audit   boolean;
BEGIN
    -- The hold in the name's row (version 13), else its row of
    -- sqldlm_holders. The audit row, when the setting is on, in a statement
    -- of its own: a data-modifying CTE costs its INSERT's set-up on every
    -- call.
    UPDATE sqldlm_locks SET x_lease = NULL
     WHERE name = p_name AND x_lease = p_lease AND token = p_token
    RETURNING x_mode, x_payload, coalesce((SELECT s.audit FROM sqldlm_settings s WHERE s.id = 1), false)
      INTO v_mode, v_payload, v_audit;
    IF NOT FOUND THEN
        DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name
        RETURNING mode, payload, coalesce((SELECT s.audit FROM sqldlm_settings s WHERE s.id = 1), false)
          INTO v_mode, v_payload, v_audit;
    END IF;
    IF NOT FOUND THEN
        -- Nothing deleted, so nothing written: a transactional WAL message
        -- makes the commit write a record, which a synchronous standby must
        -- confirm (a release retried after its first commit's wait for the
        -- standby was cancelled returns only once the standby has that
        -- commit).
        PERFORM pg_logical_emit_message(true, 'sqldlm', '');
        RETURN false;
    END IF;
    IF v_audit THEN
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        VALUES (clock_timestamp(), 'release', p_name,
                coalesce((SELECT l.owner FROM sqldlm_leases l WHERE l.id = p_lease), ''),
                p_lease, p_token, v_mode, v_payload, '');
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
$function$;
-- +goose StatementEnd

-- sqldlm_release_next: the same.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release_next(p_name text, p_lease bigint, p_token bigint)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_n       integer;
    w         record;
    v_now     timestamptz;
    v_live    boolean;
    v_owner   text;
    v_audit   boolean;
    v_token   bigint;
    v_granted boolean := false;
    v_waiting boolean;
    v_epoch   bigint;
    v_freeze  timestamptz;
    v_mode    text;
    v_payload text;
BEGIN
    v_waiting := EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name);
    IF NOT v_waiting THEN
        -- Nobody waits (the common case): this is sqldlm_release, inline.
        RETURN sqldlm_release(p_name, p_lease, p_token);
    END IF;
    PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
    -- The hold in the name's row (version 13), else its row of
    -- sqldlm_holders.
    UPDATE sqldlm_locks SET x_lease = NULL
     WHERE name = p_name AND x_lease = p_lease AND token = p_token
    RETURNING x_mode, x_payload, coalesce((SELECT s.audit FROM sqldlm_settings s WHERE s.id = 1), false)
      INTO v_mode, v_payload, v_audit;
    IF FOUND THEN
        v_n := 1;
        IF v_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            VALUES (clock_timestamp(), 'release', p_name,
                    coalesce((SELECT l.owner FROM sqldlm_leases l WHERE l.id = p_lease), ''),
                    p_lease, p_token, v_mode, v_payload, '');
        END IF;
    ELSE
        WITH d AS (
            DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name
            RETURNING token, mode, payload),
        a AS (
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            SELECT clock_timestamp(), 'release', p_name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, ''
              FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
              LEFT JOIN sqldlm_leases l ON l.id = p_lease)
        SELECT count(*), coalesce(bool_or(s.audit), false) INTO v_n, v_audit
          FROM d LEFT JOIN sqldlm_settings s ON s.id = 1;
    END IF;
    IF v_n = 0 THEN
        PERFORM pg_logical_emit_message(true, 'sqldlm', ''); -- as in sqldlm_release
        RETURN false;
    END IF;
    -- Hand over only as sqldlm_acquire would grant: not during the freeze
    -- after a failover (the head is woken, and asks), and only to waiters
    -- whose lease is of the current epoch.
    SELECT * INTO v_epoch, v_freeze FROM sqldlm_current_epoch();
    IF v_freeze > clock_timestamp() THEN
        PERFORM sqldlm_wake(p_name);
        RETURN true;
    END IF;
    FOR w IN
        SELECT x.lease_id, x.request_id, x.mode::text AS mode, x.upgrade_token, x.payload
          FROM sqldlm_waiters x
         WHERE x.name = p_name
         ORDER BY x.upgrade_token IS NULL, x.id
    LOOP
        -- Waiters of dead leases are passed over, as every grant does.
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM sqldlm_leases l
                                   WHERE l.id = w.lease_id AND l.broken_at IS NULL
                                     AND l.expires_at > clock_timestamp() AND l.epoch = v_epoch);
        EXIT WHEN w.upgrade_token IS NOT NULL
               OR (v_granted AND w.mode = 'X')
               OR EXISTS (SELECT 1 FROM sqldlm_holders h
                           WHERE h.name = p_name AND (w.mode = 'X' OR h.mode = 'X'));
        PERFORM 1 FROM sqldlm_leases WHERE id = w.lease_id FOR KEY SHARE;
        EXIT WHEN NOT FOUND;
        PERFORM 1 FROM sqldlm_waiters WHERE lease_id = w.lease_id AND request_id = w.request_id FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        v_now := clock_timestamp();
        SELECT l.broken_at IS NULL AND l.expires_at > v_now, l.owner INTO v_live, v_owner
          FROM sqldlm_leases l WHERE l.id = w.lease_id;
        EXIT WHEN NOT coalesce(v_live, false);
        INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
        VALUES (p_name, w.lease_id, w.request_id, w.mode, v_now, w.payload)
        RETURNING token INTO v_token;
        IF v_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            VALUES (v_now, 'grant', p_name, v_owner, w.lease_id, v_token, w.mode, w.payload, '');
        END IF;
        UPDATE sqldlm_locks SET token = v_token, updated_at = v_now WHERE name = p_name;
        DELETE FROM sqldlm_waiters WHERE lease_id = w.lease_id AND request_id = w.request_id;
        PERFORM pg_notify(sqldlm_channel(), 'g ' || w.lease_id || ' ' || w.request_id || ' ' || v_token || ' ' || p_name);
        v_granted := true;
        EXIT WHEN w.mode = 'X';
    END LOOP;
    IF NOT v_granted THEN
        PERFORM sqldlm_wake(p_name);
    END IF;
    RETURN true;
END
$function$;
-- +goose StatementEnd

-- sqldlm_downgrade: an inline hold moves to sqldlm_holders first.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_downgrade(p_name text, p_lease bigint, p_token bigint)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_n integer;
BEGIN
    -- A hold in the name's row (version 13) moves to sqldlm_holders first.
    PERFORM sqldlm_spill(p_name, p_lease, p_token);
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
$function$;
-- +goose StatementEnd

-- sqldlm_set_payload: the inline hold, else the row of sqldlm_holders.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_set_payload(p_name text, p_lease bigint, p_token bigint, p_payload text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- The lease check reads the statement's snapshot, as in sqldlm_downgrade.
    -- The hold in the name's row (version 13), else its row of
    -- sqldlm_holders.
    UPDATE sqldlm_locks SET x_payload = p_payload
     WHERE name = p_name AND x_lease = p_lease AND token = p_token
       AND EXISTS (SELECT 1 FROM sqldlm_leases
                    WHERE id = p_lease AND broken_at IS NULL AND expires_at > clock_timestamp());
    IF FOUND THEN
        RETURN true;
    END IF;
    UPDATE sqldlm_holders SET payload = p_payload
     WHERE token = p_token AND lease_id = p_lease AND name = p_name
       AND EXISTS (SELECT 1 FROM sqldlm_leases
                    WHERE id = p_lease AND broken_at IS NULL AND expires_at > clock_timestamp());
    RETURN FOUND;
END
$function$;
-- +goose StatementEnd

-- sqldlm_abandon (old clients'): inline holds of the request too.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_abandon(p_lease bigint, p_request bigint)
 RETURNS text[]
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_waiting text[];
    v_held    text[];
    v_inline  text[];
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
    -- A hold in a name's row (version 13): found by a scan, as the request's
    -- name is not known here.
    WITH d AS (
        UPDATE sqldlm_locks SET x_lease = NULL
         WHERE x_lease = p_lease AND x_request = p_request
        RETURNING name, token, x_mode, x_payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.x_mode, d.x_payload, 'abandoned'
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease)
    SELECT array_agg(name) INTO v_inline FROM d;
    v_held := v_held || v_inline;
    -- A withdrawn waiter may have kept later ones out: wake them too.
    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(v_held || v_waiting) AS n) s;
    RETURN coalesce(v_held, '{}');
END
$function$;
-- +goose StatementEnd

-- sqldlm_abandon: the inline hold of the request too.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_abandon(p_name text, p_lease bigint, p_request bigint, p_keep boolean, OUT o_freed text[], OUT o_kept bigint)
 RETURNS record
 LANGUAGE plpgsql
 SET lock_timeout TO '1s'
AS $function$
DECLARE
    v_waiting text[];
    v_inline  text[];
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
        -- An update, not only the lock: a fast grant (sqldlm_acquire) that
        -- waits for this row then finds it changed, and grants nothing.
        UPDATE sqldlm_locks SET token = token WHERE name = p_name;
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
        IF o_kept IS NULL THEN
            SELECT token INTO o_kept FROM sqldlm_locks
             WHERE name = p_name AND x_lease = p_lease AND x_request = p_request;
        END IF;
    ELSE
        -- A hold in the name's row (version 13).
        WITH d AS (
            UPDATE sqldlm_locks SET x_lease = NULL
             WHERE name = p_name AND x_lease = p_lease AND x_request = p_request
            RETURNING name, token, x_mode, x_payload),
        a AS (
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.x_mode, d.x_payload, 'abandoned'
              FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
              LEFT JOIN sqldlm_leases l ON l.id = p_lease)
        SELECT array_agg(name) INTO v_inline FROM d;
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
        o_freed := o_freed || v_inline;
    END IF;
    -- A withdrawn waiter may have kept later ones out: wake them too.
    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(o_freed || v_waiting) AS n) s;
    o_freed := coalesce(o_freed, '{}');
END
$function$;
-- +goose StatementEnd

-- sqldlm_delete_lease: the lease's inline holds too.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_delete_lease(p_lease bigint)
 RETURNS text[]
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_held    text[];
    v_waiting text[];
    v_inline  text[];
BEGIN
    -- The rows of the names that hold a hold of the lease in them (version
    -- 13) first, in the order grants lock: a name's row, then a lease.
    PERFORM 1 FROM sqldlm_locks WHERE x_lease = p_lease ORDER BY name FOR NO KEY UPDATE;
    -- Then the lease: grants, takeovers and fences of it lock it before its
    -- holds too, and wait for, or are refused after, this deletion.
    PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR UPDATE;
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = p_lease RETURNING name, token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.mode, d.payload, 'lease closed'
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease
         ORDER BY d.token)
    SELECT array_agg(DISTINCT name) INTO v_held FROM d;
    -- Its holds in names' rows (version 13): a scan of sqldlm_locks, which
    -- has no index on x_lease.
    WITH d AS (UPDATE sqldlm_locks SET x_lease = NULL WHERE x_lease = p_lease RETURNING name, token, x_mode, x_payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT clock_timestamp(), 'release', d.name, coalesce(l.owner, ''), p_lease, d.token, d.x_mode, d.x_payload, 'lease closed'
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = p_lease
         ORDER BY d.token)
    SELECT array_agg(name) INTO v_inline FROM d;
    v_held := v_held || v_inline;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = p_lease RETURNING name)
    SELECT array_agg(DISTINCT name) INTO v_waiting FROM d;
    DELETE FROM sqldlm_pending WHERE lease_id = p_lease;
    DELETE FROM sqldlm_withdrawn WHERE lease_id = p_lease;
    DELETE FROM sqldlm_leases WHERE id = p_lease;
    PERFORM sqldlm_wake(n) FROM (SELECT DISTINCT unnest(v_held || v_waiting) AS n) s;
    RETURN coalesce(v_held, '{}');
END
$function$;
-- +goose StatementEnd

-- sqldlm_reap: the dead leases' inline holds too; idle rows have none.
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
    v_inline    integer;
    v_inline_names text[];
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
    -- Their holds in names' rows (version 13), first: a scan of
    -- sqldlm_locks, which has no index on x_lease, so only when there are
    -- dead leases. A name's row locked by another transaction (a grant or a
    -- release of the name in progress) is skipped, and its hold's lease is
    -- kept for a later pass (below): waiting here, with the leases locked,
    -- could deadlock with a grant that holds the name's row and waits for
    -- one of them.
    IF v_ids IS NOT NULL THEN
        WITH o AS (
            SELECT k.name, k.x_lease FROM sqldlm_locks k
             WHERE k.x_lease = ANY (v_ids)
               FOR NO KEY UPDATE SKIP LOCKED),
        d AS (
            UPDATE sqldlm_locks k SET x_lease = NULL
              FROM o
             WHERE k.name = o.name AND k.x_lease = o.x_lease
            RETURNING k.name, o.x_lease AS lease_id, k.token, k.x_mode, k.x_payload),
        a AS (
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            SELECT v_now, 'expire', d.name, coalesce(l.owner, ''), d.lease_id, d.token, d.x_mode, d.x_payload, ''
              FROM d LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
             WHERE coalesce(v_audit, false)
             ORDER BY d.token)
        SELECT count(*), array_agg(name) INTO v_inline, v_inline_names FROM d;
    END IF;
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = ANY (v_ids) RETURNING name, lease_id, token, mode, payload),
    a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT v_now, 'expire', d.name, coalesce(l.owner, ''), d.lease_id, d.token, d.mode, d.payload, ''
          FROM d LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
         WHERE coalesce(v_audit, false)
         ORDER BY d.token)
    SELECT count(*) + coalesce(v_inline, 0), array_agg(DISTINCT name) || v_inline_names INTO o_holds, o_freed FROM d;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = ANY (v_ids) RETURNING name)
    SELECT count(*), array_agg(DISTINCT name) INTO o_waiters, v_waiting FROM d;
    IF v_inline IS NOT NULL THEN
        SELECT array_agg(id) INTO v_ids FROM unnest(v_ids) AS id
         WHERE id <> ALL (coalesce((SELECT array_agg(k.x_lease) FROM sqldlm_locks k WHERE k.x_lease = ANY (v_ids)), '{}'));
    END IF;
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

    -- Idle lock rows. Holds of a name are only written under its row's
    -- lock, so once we hold it a fresh snapshot shows them all.
    SELECT array_agg(name) INTO v_names FROM (
        SELECT k.name FROM sqldlm_locks k
         WHERE k.updated_at < v_now - p_idle_us * interval '1 microsecond'
           AND k.x_lease IS NULL
           AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = k.name)
           AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = k.name)
         ORDER BY k.updated_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED) s;
    DELETE FROM sqldlm_locks k
     WHERE k.name = ANY (v_names)
       AND k.updated_at < v_now - p_idle_us * interval '1 microsecond'
       AND k.x_lease IS NULL
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

-- sqldlm_break: the inline holds too.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_break(p_name text, p_owner text)
 RETURNS TABLE(o_id bigint, o_owner text, o_created_at timestamp with time zone, o_renewed_at timestamp with time zone, o_expires_at timestamp with time zone, o_holds bigint, o_waits bigint, o_now timestamp with time zone)
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_ids bigint[];
    v_now timestamptz;
BEGIN
    SELECT array_agg(s.id) INTO v_ids FROM (
        SELECT l.id FROM sqldlm_leases l
         WHERE l.id IN (SELECT h.lease_id FROM sqldlm_holders h WHERE h.name = p_name
                        UNION ALL
                        SELECT k.x_lease FROM sqldlm_locks k WHERE k.name = p_name AND k.x_lease IS NOT NULL)
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
           AND l.id IN (SELECT h.lease_id FROM sqldlm_holders h WHERE h.name = p_name
                          UNION ALL
                          SELECT k.x_lease FROM sqldlm_locks k WHERE k.name = p_name AND k.x_lease IS NOT NULL)
        RETURNING l.id)
    SELECT array_agg(b.id) INTO v_ids FROM b;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
    SELECT v_now, 'break', h.name, l.owner, h.lease_id, h.token, h.mode, h.payload,
           CASE WHEN h.name = p_name THEN '' ELSE 'with ' || p_name END
      FROM (SELECT h.name, h.lease_id, h.token, h.mode, h.payload FROM sqldlm_holders h
            UNION ALL
            SELECT k.name, k.x_lease, k.token, k.x_mode, k.x_payload FROM sqldlm_locks k
             WHERE k.x_lease = ANY (v_ids)) h
      JOIN sqldlm_leases l ON l.id = h.lease_id
      JOIN sqldlm_settings s ON s.id = 1 AND s.audit
     WHERE h.lease_id = ANY (v_ids)
     ORDER BY h.name <> p_name, l.owner COLLATE "C", h.lease_id, h.token;
    PERFORM sqldlm_wake(s.name) FROM (
        SELECT h.name FROM sqldlm_holders h WHERE h.lease_id = ANY (v_ids)
        UNION
        SELECT k.name FROM sqldlm_locks k WHERE k.x_lease = ANY (v_ids)
        UNION
        SELECT w.name FROM sqldlm_waiters w WHERE w.lease_id = ANY (v_ids)) s;
    RETURN QUERY
    SELECT l.id, l.owner, l.created_at, l.renewed_at, l.expires_at,
           (SELECT count(*) FROM sqldlm_holders h WHERE h.lease_id = l.id)
           + coalesce(x.n, 0),
           (SELECT count(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id),
           v_now
      FROM sqldlm_leases l
      LEFT JOIN (SELECT k.x_lease, count(*) AS n FROM sqldlm_locks k
                  WHERE k.x_lease = ANY (v_ids) GROUP BY k.x_lease) x ON x.x_lease = l.id
     WHERE l.id = ANY (v_ids)
     ORDER BY l.owner COLLATE "C", l.id;
END
$function$;
-- +goose StatementEnd

CREATE OR REPLACE VIEW sqldlm_holders_view AS
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT h.name, l.owner, h.lease_id,
       CASE h.mode WHEN 'X' THEN 'exclusive' ELSE 'shared' END AS mode,
       h.token, h.acquired_at,
       round(extract(epoch FROM c.now - h.acquired_at), 3) AS held_seconds,
       round(extract(epoch FROM l.expires_at - c.now), 3) AS expires_in_seconds,
       coalesce(l.broken_at IS NULL AND l.expires_at > c.now, false) AS live,
       h.payload
  FROM sqldlm_holds h CROSS JOIN c LEFT JOIN sqldlm_leases l ON l.id = h.lease_id;

-- The holds per lease in one pass over sqldlm_holds (the inline holds are
-- found by a scan of sqldlm_locks, once, not once per lease).
CREATE OR REPLACE VIEW sqldlm_leases_view AS
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT l.id AS lease_id, l.owner, l.created_at, l.renewed_at, l.expires_at,
       round(extract(epoch FROM l.expires_at - c.now), 3) AS expires_in_seconds,
       l.broken_at IS NOT NULL AS broken,
       l.broken_at IS NULL AND l.expires_at > c.now AS live,
       coalesce(h.n, 0) AS holds,
       (SELECT count(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id) AS waits
  FROM sqldlm_leases l CROSS JOIN c
  LEFT JOIN (SELECT lease_id, count(*) AS n FROM sqldlm_holds GROUP BY lease_id) h ON h.lease_id = l.id;

-- +goose Down

-- Every inline hold moves to sqldlm_holders (same token, request, time and
-- payload); then version 12's views and functions, exactly.
INSERT INTO sqldlm_holders (token, name, lease_id, request_id, mode, acquired_at, payload)
OVERRIDING SYSTEM VALUE
SELECT k.token, k.name, k.x_lease, k.x_request, k.x_mode, k.x_since, coalesce(k.x_payload, '')
  FROM sqldlm_locks k
 WHERE k.x_lease IS NOT NULL;
UPDATE sqldlm_locks SET x_lease = NULL WHERE x_lease IS NOT NULL;


-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_acquire(p_name text, p_lease bigint, p_request bigint, p_mode text, p_enqueue boolean, p_upgrade bigint, p_payload text, p_delay_us bigint, OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text, OUT o_expires_us bigint, OUT o_ahead integer, OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[], OUT o_took_modes text[], OUT o_took_expires timestamp with time zone[], OUT o_took_broken boolean[], OUT o_took_payloads text[])
 RETURNS record
 LANGUAGE plpgsql
 SET lock_timeout TO '1s'
AS $function$
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
    v_guarded boolean := false;
    v_epoch   bigint;
    v_freeze  timestamptz;
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('S', 'X') OR (v_upgrade IS NOT NULL AND p_mode <> 'X') THEN
        RAISE EXCEPTION 'sqldlm_acquire: invalid mode % (upgrade %)', p_mode, p_upgrade
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    o_ahead := 0;

    -- The failover epoch (sqldlm_current_epoch: a plain read of its row
    -- unless this server's timeline changed). A lease of an older epoch was
    -- created or last renewed before a failover: it is lost, whatever its
    -- expiry says. After an epoch change nothing is granted (nor queued)
    -- until the freeze ends: by then every holder of the older epoch has
    -- stopped trusting its locks, and every lease of that epoch has
    -- expired. The answer is 'blocked' by '(failover)', expiring when the
    -- freeze ends.
    SELECT * INTO v_epoch, v_freeze FROM sqldlm_current_epoch();
    v_now := clock_timestamp();

    -- Fast path (version 10): one statement grants a request of a name with
    -- no hold and no waiter (the common, uncontended case), or changes
    -- nothing. It pins the own lease (FOR KEY SHARE, as before: a
    -- DeleteLease waits for the grant, or has deleted the lease and nothing
    -- is granted), then claims the name's row with an UPDATE whose WHERE
    -- holds only if the row's version is the one this statement's snapshot
    -- read (n.xmin = s.seen) and that snapshot shows no hold and no waiter
    -- of the name, no hold of this request and no withdrawal of it. The
    -- UPDATE takes the row's lock; if another transaction updated the row
    -- meanwhile, PostgreSQL re-checks the WHERE on the newest version, whose
    -- xmin differs, and nothing is granted. Every transaction that inserts a
    -- hold of a name (a grant, a handover) or records a withdrawal of a
    -- request of it updates the name's row under its lock (the token, or in
    -- sqldlm_abandon a no-op update), so a fast grant either saw its commit
    -- or fails; one that only locked the row changed nothing the decision
    -- depends on. A fast path that changes nothing falls through to the
    -- general path below, which decides as before. The token comes from the
    -- holds' identity sequence, drawn by the UPDATE (again when it re-checks
    -- a changed row), so a name's tokens grow in the order of its grants.
    -- The lease is checked again with a clock read after every lock (the
    -- UPDATE may have waited for the row), and a grant to a lease that
    -- expired meanwhile is deleted again before anyone could see it.
    IF v_upgrade IS NULL AND v_freeze <= v_now THEN
        WITH l AS (
            SELECT l.id FROM sqldlm_leases l
             WHERE l.id = p_lease AND l.epoch = v_epoch AND l.broken_at IS NULL
               AND l.expires_at > clock_timestamp()
               FOR KEY SHARE),
        g AS (
            UPDATE sqldlm_locks n
               SET token = nextval(pg_get_serial_sequence('sqldlm_holders', 'token'))
              FROM l, (SELECT k.xmin AS seen FROM sqldlm_locks k WHERE k.name = p_name) s
             WHERE n.name = p_name
               AND n.xmin = s.seen
               AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = p_name)
               AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = p_name)
               AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.lease_id = p_lease AND h.request_id = p_request)
               AND NOT EXISTS (SELECT 1 FROM sqldlm_withdrawn x WHERE x.lease_id = p_lease AND x.request_id = p_request)
            RETURNING n.token)
        INSERT INTO sqldlm_holders (token, name, lease_id, request_id, mode, acquired_at, payload)
        OVERRIDING SYSTEM VALUE
        SELECT g.token, p_name, p_lease, p_request, p_mode, clock_timestamp(), v_payload FROM g
        RETURNING token, acquired_at INTO o_token, v_now;
        IF o_token IS NOT NULL THEN
            SELECT l.broken_at IS NULL AND l.expires_at > clock_timestamp(), l.owner, coalesce(s.audit, false)
              INTO v_live, v_owner, v_audit
              FROM sqldlm_leases l LEFT JOIN sqldlm_settings s ON s.id = 1
             WHERE l.id = p_lease;
            IF NOT coalesce(v_live, false) THEN
                DELETE FROM sqldlm_holders WHERE token = o_token;
                o_token := NULL;
                o_status := 'lease_lost';
                RETURN;
            END IF;
            IF v_audit THEN
                INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
                VALUES (v_now, 'grant', p_name, v_owner, p_lease, o_token, p_mode, v_payload, '');
            END IF;
            o_status := 'granted';
            RETURN;
        END IF;
        v_now := clock_timestamp();
    END IF;

    IF NOT EXISTS (SELECT 1 FROM sqldlm_leases WHERE id = p_lease AND epoch = v_epoch) THEN
        o_status := 'lease_lost';
        RETURN;
    END IF;
    IF v_freeze > v_now THEN
        o_status := 'blocked';
        o_owner := '(failover)';
        o_mode := 'X';
        o_expires_us := ceil(extract(epoch FROM v_freeze - v_now) * 1000000)::bigint;
        RETURN;
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
        -- It writes nothing else, and a commit that wrote nothing does not
        -- wait for a synchronous standby (nor does one that only assigned
        -- a transaction id): a transactional WAL message makes this
        -- commit write a record, after the grant's, which the standby
        -- must confirm before the answer goes out.
        PERFORM pg_logical_emit_message(true, 'sqldlm', '');
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
            PERFORM pg_logical_emit_message(true, 'sqldlm', ''); -- as in phase 1
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
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_evaluate(p_name text, p_lease bigint, p_request bigint, p_mode text, p_upgrade bigint, p_delay interval, p_now timestamp with time zone)
 RETURNS TABLE(lease_live boolean, held_token bigint, waiter_id bigint, upgrade_held boolean, upgrade_conflict boolean, blocker_owner text, blocker_mode text, blocker_expires_us bigint, waiters_ahead integer, dead_leases bigint[])
 LANGUAGE sql
 STABLE
AS $function$
SELECT
    coalesce((SELECT l.broken_at IS NULL AND l.expires_at > p_now FROM sqldlm_leases l WHERE l.id = p_lease), false),
    (SELECT h.token FROM sqldlm_holders h WHERE h.lease_id = p_lease AND h.request_id = p_request LIMIT 1),
    own.id,
    p_upgrade IS NULL OR EXISTS (SELECT 1 FROM sqldlm_holders h
                                  WHERE h.token = p_upgrade AND h.lease_id = p_lease AND h.name = p_name),
    p_upgrade IS NOT NULL AND EXISTS (
        SELECT 1 FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
         WHERE w.name = p_name AND w.upgrade_token IS NOT NULL AND w.upgrade_token <> p_upgrade
           AND l.broken_at IS NULL AND l.expires_at > p_now),
    b.owner,
    b.mode,
    b.expires_us,
    CASE WHEN p_upgrade IS NOT NULL THEN 0 ELSE (
        SELECT count(*)::integer FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
         WHERE w.name = p_name
           AND l.broken_at IS NULL AND l.expires_at > p_now
           AND NOT (w.lease_id = p_lease AND w.request_id = p_request)
           AND (w.upgrade_token IS NOT NULL
                OR ((p_mode = 'X' OR w.mode = 'X') AND w.id < coalesce(own.id, 9223372036854775807)))) END,
    (SELECT array_agg(DISTINCT h.lease_id ORDER BY h.lease_id)
       FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
      WHERE h.name = p_name
        AND h.token IS DISTINCT FROM p_upgrade
        AND (p_mode = 'X' OR h.mode = 'X')
        AND NOT (l.broken_at IS NULL AND l.expires_at > p_now)
        AND least(l.expires_at, coalesce(l.broken_at, l.expires_at)) + p_delay <= p_now)
FROM (SELECT 1) AS one
LEFT JOIN sqldlm_waiters own ON own.lease_id = p_lease AND own.request_id = p_request
LEFT JOIN LATERAL (
    SELECT t.owner, t.mode, ceil(extract(epoch FROM t.until - p_now) * 1000000)::bigint AS expires_us
      FROM (SELECT l.owner, h.mode::text AS mode,
                   CASE WHEN l.broken_at IS NULL AND l.expires_at > p_now THEN l.expires_at
                        ELSE least(l.expires_at, coalesce(l.broken_at, l.expires_at)) + p_delay END AS until
              FROM sqldlm_holders h JOIN sqldlm_leases l ON l.id = h.lease_id
             WHERE h.name = p_name
               AND h.token IS DISTINCT FROM p_upgrade
               AND (p_mode = 'X' OR h.mode = 'X')) t
     WHERE t.until > p_now
     ORDER BY t.until DESC
     LIMIT 1) AS b ON true
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_enqueue_guard(p_name text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM 1 FROM sqldlm_holders WHERE name = p_name ORDER BY token FOR SHARE;
    PERFORM 1 FROM sqldlm_waiters WHERE name = p_name ORDER BY id FOR SHARE;
END
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release(p_name text, p_lease bigint, p_token bigint)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_mode    text;
    v_payload text;
    v_audit   boolean;
BEGIN
    -- The audit row, when the setting is on, in a statement of its own:
    -- a data-modifying CTE costs its INSERT's set-up on every call.
    DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name
    RETURNING mode, payload, coalesce((SELECT s.audit FROM sqldlm_settings s WHERE s.id = 1), false)
      INTO v_mode, v_payload, v_audit;
    IF NOT FOUND THEN
        -- Nothing deleted, so nothing written: a transactional WAL message
        -- makes the commit write a record, which a synchronous standby must
        -- confirm (a release retried after its first commit's wait for the
        -- standby was cancelled returns only once the standby has that
        -- commit).
        PERFORM pg_logical_emit_message(true, 'sqldlm', '');
        RETURN false;
    END IF;
    IF v_audit THEN
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        VALUES (clock_timestamp(), 'release', p_name,
                coalesce((SELECT l.owner FROM sqldlm_leases l WHERE l.id = p_lease), ''),
                p_lease, p_token, v_mode, v_payload, '');
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
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release_next(p_name text, p_lease bigint, p_token bigint)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
DECLARE
    v_n       integer;
    w         record;
    v_now     timestamptz;
    v_live    boolean;
    v_owner   text;
    v_audit   boolean;
    v_token   bigint;
    v_granted boolean := false;
    v_waiting boolean;
    v_epoch   bigint;
    v_freeze  timestamptz;
BEGIN
    v_waiting := EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name);
    IF NOT v_waiting THEN
        -- Nobody waits (the common case): this is sqldlm_release, inline.
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
    SELECT count(*), coalesce(bool_or(s.audit), false) INTO v_n, v_audit
      FROM d LEFT JOIN sqldlm_settings s ON s.id = 1;
    IF v_n = 0 THEN
        PERFORM pg_logical_emit_message(true, 'sqldlm', ''); -- as in sqldlm_release
        RETURN false;
    END IF;
    -- Hand over only as sqldlm_acquire would grant: not during the freeze
    -- after a failover (the head is woken, and asks), and only to waiters
    -- whose lease is of the current epoch.
    SELECT * INTO v_epoch, v_freeze FROM sqldlm_current_epoch();
    IF v_freeze > clock_timestamp() THEN
        PERFORM sqldlm_wake(p_name);
        RETURN true;
    END IF;
    FOR w IN
        SELECT x.lease_id, x.request_id, x.mode::text AS mode, x.upgrade_token, x.payload
          FROM sqldlm_waiters x
         WHERE x.name = p_name
         ORDER BY x.upgrade_token IS NULL, x.id
    LOOP
        -- Waiters of dead leases are passed over, as every grant does.
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM sqldlm_leases l
                                   WHERE l.id = w.lease_id AND l.broken_at IS NULL
                                     AND l.expires_at > clock_timestamp() AND l.epoch = v_epoch);
        EXIT WHEN w.upgrade_token IS NOT NULL
               OR (v_granted AND w.mode = 'X')
               OR EXISTS (SELECT 1 FROM sqldlm_holders h
                           WHERE h.name = p_name AND (w.mode = 'X' OR h.mode = 'X'));
        PERFORM 1 FROM sqldlm_leases WHERE id = w.lease_id FOR KEY SHARE;
        EXIT WHEN NOT FOUND;
        PERFORM 1 FROM sqldlm_waiters WHERE lease_id = w.lease_id AND request_id = w.request_id FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        v_now := clock_timestamp();
        SELECT l.broken_at IS NULL AND l.expires_at > v_now, l.owner INTO v_live, v_owner
          FROM sqldlm_leases l WHERE l.id = w.lease_id;
        EXIT WHEN NOT coalesce(v_live, false);
        INSERT INTO sqldlm_holders (name, lease_id, request_id, mode, acquired_at, payload)
        VALUES (p_name, w.lease_id, w.request_id, w.mode, v_now, w.payload)
        RETURNING token INTO v_token;
        IF v_audit THEN
            INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
            VALUES (v_now, 'grant', p_name, v_owner, w.lease_id, v_token, w.mode, w.payload, '');
        END IF;
        UPDATE sqldlm_locks SET token = v_token, updated_at = v_now WHERE name = p_name;
        DELETE FROM sqldlm_waiters WHERE lease_id = w.lease_id AND request_id = w.request_id;
        PERFORM pg_notify(sqldlm_channel(), 'g ' || w.lease_id || ' ' || w.request_id || ' ' || v_token || ' ' || p_name);
        v_granted := true;
        EXIT WHEN w.mode = 'X';
    END LOOP;
    IF NOT v_granted THEN
        PERFORM sqldlm_wake(p_name);
    END IF;
    RETURN true;
END
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_downgrade(p_name text, p_lease bigint, p_token bigint)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
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
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_set_payload(p_name text, p_lease bigint, p_token bigint, p_payload text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- The lease check reads the statement's snapshot, as in sqldlm_downgrade.
    UPDATE sqldlm_holders SET payload = p_payload
     WHERE token = p_token AND lease_id = p_lease AND name = p_name
       AND EXISTS (SELECT 1 FROM sqldlm_leases
                    WHERE id = p_lease AND broken_at IS NULL AND expires_at > clock_timestamp());
    RETURN FOUND;
END
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_abandon(p_lease bigint, p_request bigint)
 RETURNS text[]
 LANGUAGE plpgsql
AS $function$
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
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_abandon(p_name text, p_lease bigint, p_request bigint, p_keep boolean, OUT o_freed text[], OUT o_kept bigint)
 RETURNS record
 LANGUAGE plpgsql
 SET lock_timeout TO '1s'
AS $function$
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
        -- An update, not only the lock: a fast grant (sqldlm_acquire) that
        -- waits for this row then finds it changed, and grants nothing.
        UPDATE sqldlm_locks SET token = token WHERE name = p_name;
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
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_delete_lease(p_lease bigint)
 RETURNS text[]
 LANGUAGE plpgsql
AS $function$
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
$function$;
-- +goose StatementEnd

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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_break(p_name text, p_owner text)
 RETURNS TABLE(o_id bigint, o_owner text, o_created_at timestamp with time zone, o_renewed_at timestamp with time zone, o_expires_at timestamp with time zone, o_holds bigint, o_waits bigint, o_now timestamp with time zone)
 LANGUAGE plpgsql
AS $function$
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
$function$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_acquire_tx(p_name text, p_lease bigint, p_request bigint, p_mode text, p_payload text, p_delay_us bigint, OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text, OUT o_expires_us bigint, OUT o_ahead integer, OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[], OUT o_took_modes text[], OUT o_took_expires timestamp with time zone[], OUT o_took_broken boolean[], OUT o_took_payloads text[])
 RETURNS record
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'sqldlm_acquire_tx: the transaction runs at %; it must run at READ COMMITTED (sql.TxOptions{Isolation: sql.LevelReadCommitted})',
            upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'SQD01';
    END IF;
    SELECT a.o_status, a.o_token, a.o_owner, a.o_mode, a.o_expires_us, a.o_ahead,
           a.o_took_owners, a.o_took_leases, a.o_took_tokens, a.o_took_modes, a.o_took_expires,
           a.o_took_broken, a.o_took_payloads
      INTO o_status, o_token, o_owner, o_mode, o_expires_us, o_ahead,
           o_took_owners, o_took_leases, o_took_tokens, o_took_modes, o_took_expires,
           o_took_broken, o_took_payloads
      FROM sqldlm_acquire(p_name, p_lease, p_request, p_mode, false, NULL, p_payload, p_delay_us) a;
    IF o_status = 'granted' THEN
        DELETE FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
    END IF;
END
$function$;
-- +goose StatementEnd

CREATE OR REPLACE VIEW sqldlm_holders_view AS
 WITH c AS MATERIALIZED (
         SELECT clock_timestamp() AS now
        )
 SELECT h.name,
    l.owner,
    h.lease_id,
        CASE h.mode
            WHEN 'X'::bpchar THEN 'exclusive'::text
            ELSE 'shared'::text
        END AS mode,
    h.token,
    h.acquired_at,
    round(EXTRACT(epoch FROM c.now - h.acquired_at), 3) AS held_seconds,
    round(EXTRACT(epoch FROM l.expires_at - c.now), 3) AS expires_in_seconds,
    COALESCE(l.broken_at IS NULL AND l.expires_at > c.now, false) AS live,
    h.payload
   FROM sqldlm_holders h
     CROSS JOIN c
     LEFT JOIN sqldlm_leases l ON l.id = h.lease_id;

CREATE OR REPLACE VIEW sqldlm_leases_view AS
 WITH c AS MATERIALIZED (
         SELECT clock_timestamp() AS now
        )
 SELECT l.id AS lease_id,
    l.owner,
    l.created_at,
    l.renewed_at,
    l.expires_at,
    round(EXTRACT(epoch FROM l.expires_at - c.now), 3) AS expires_in_seconds,
    l.broken_at IS NOT NULL AS broken,
    l.broken_at IS NULL AND l.expires_at > c.now AS live,
    ( SELECT count(*) AS count
           FROM sqldlm_holders h
          WHERE h.lease_id = l.id) AS holds,
    ( SELECT count(*) AS count
           FROM sqldlm_waiters w
          WHERE w.lease_id = l.id) AS waits
   FROM sqldlm_leases l
     CROSS JOIN c;


DROP VIEW sqldlm_holds;
DROP FUNCTION sqldlm_spill(text, bigint, bigint);
ALTER TABLE sqldlm_locks
    DROP COLUMN x_lease,
    DROP COLUMN x_request,
    DROP COLUMN x_mode,
    DROP COLUMN x_since,
    DROP COLUMN x_payload;
