-- sqldlm schema version 10 for PostgreSQL: the uncontended grant in one
-- statement, and a leaner release (issue 18).
--
-- Until version 9, sqldlm_acquire's fast path (a name with no hold and no
-- waiter) locked the name's row FOR UPDATE, locked the own lease FOR KEY
-- SHARE, checked the withdrawal record, read the name, the lease and the
-- request's holds again with a new snapshot, inserted the hold and updated
-- the name's row: seven statements and two writes of the name's row.
--
-- Now one statement does it (see the comment in sqldlm_acquire): it pins the
-- own lease, then UPDATEs the name's row only where that row is still the
-- version its snapshot read and the snapshot shows the name free, and
-- inserts the hold with the token the UPDATE drew. The decision is made on
-- the statement's snapshot, so what makes it safe is that PostgreSQL
-- re-checks an UPDATE's WHERE on the row's newest version after waiting for
-- a concurrent updater, and that every transaction that could make the
-- decision wrong updates the name's row while it holds the row's lock:
--
--   - a grant of the name (sqldlm_acquire's general path, sqldlm_release_next's
--     handover, another fast grant) inserts the hold and updates the token;
--   - a withdrawal (sqldlm_abandon) now updates the row too (a no-op
--     update: a new version of the row), where version 9 only locked it.
--
-- A transaction that locked the row and changed nothing a grant depends on
-- (a request that ended blocked or queued, a handover that granted nobody)
-- does not stop a fast grant that waited for it: its snapshot still shows
-- everything the grant decides on. A queued waiter the fast grant did not
-- see is handed over to or woken by the release of that grant, which
-- looks for waiters after its delete, as before.
--
-- After the statement, the own lease is read again with a clock taken after
-- every lock (the UPDATE may have waited for the name's row): a grant to a
-- lease that expired meanwhile is deleted before the transaction commits,
-- and the answer is lease_lost, as before.
--
-- Lock order: the fast path locks the own lease (FOR KEY SHARE) before the
-- name's row, the reverse of version 1's order. It cannot deadlock: FOR KEY
-- SHARE conflicts only with FOR UPDATE and DELETE of the lease row, which
-- DeleteLease takes before any other row lock and Reap with SKIP LOCKED, so
-- no transaction holds a name's row while it waits for that lease; renewals,
-- Break and takeovers update leases FOR NO KEY UPDATE, which does not
-- conflict with it.
--
-- When the fast statement changes nothing (a held or queued name, a name
-- without a row yet, an upgrade, the freeze after a failover, a withdrawn
-- or repeated request, a lease that is not live), the general path runs as
-- in version 9, with the same checks in the same order.
--
-- The release: sqldlm_release deletes the hold with a plain DELETE ...
-- RETURNING, and writes the audit row, when the setting is on, in a
-- statement of its own. Version 9 wrote it from a data-modifying CTE joined
-- to the setting's row, whose INSERT was set up on every call, audit on or
-- off. sqldlm_release_next, when nobody waits, calls sqldlm_release (it was
-- a copy of it); with waiters it runs as in version 9.
--
-- Measured on one backend (acquire, commit, release, commit, 10,000 times
-- in a procedure, synchronous_commit off, so server work only): version 9
-- about 185 us per pair, the one-statement grant about 168, with the leaner
-- release about 155.
--
-- Down restores version 9's sqldlm_acquire, sqldlm_abandon, sqldlm_release
-- and sqldlm_release_next exactly.

-- +goose Up

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

-- +goose Down

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
    v_busy    boolean;
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
    IF NOT EXISTS (SELECT 1 FROM sqldlm_leases WHERE id = p_lease AND epoch = v_epoch) THEN
        o_status := 'lease_lost';
        RETURN;
    END IF;
    v_now := clock_timestamp();
    IF v_freeze > v_now THEN
        o_status := 'blocked';
        o_owner := '(failover)';
        o_mode := 'X';
        o_expires_us := ceil(extract(epoch FROM v_freeze - v_now) * 1000000)::bigint;
        RETURN;
    END IF;

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
CREATE OR REPLACE FUNCTION sqldlm_release(p_name text, p_lease bigint, p_token bigint)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
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
        -- Nothing deleted, so nothing written: a transactional WAL message
        -- makes the commit write a record, which a synchronous standby must
        -- confirm (a release retried after its first commit's wait for the
        -- standby was cancelled returns only once the standby has that
        -- commit).
        PERFORM pg_logical_emit_message(true, 'sqldlm', '');
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
    IF v_waiting THEN
        PERFORM 1 FROM sqldlm_locks WHERE name = p_name FOR UPDATE;
    END IF;
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
    ELSIF NOT v_waiting THEN
        -- Nobody waited: this was sqldlm_release, inline. A waiter that
        -- queued meanwhile is woken, as sqldlm_release does.
        IF EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name) THEN
            PERFORM sqldlm_wake(p_name);
        END IF;
        RETURN true;
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
