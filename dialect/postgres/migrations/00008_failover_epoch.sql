-- sqldlm schema version 8 for PostgreSQL: failover epochs (the PostgreSQL
-- findings P1–P4 of the cluster report; docs/failover-design.md).
--
-- A standby promoted after its primary failed starts a new timeline, and
-- whatever the old primary committed without shipping is gone: grants (the
-- token handed out again, its holder never told), releases (the hold back on
-- a live lease that no Lock refers to: the name wedged while its client
-- lives), waiter rows and handovers. With a synchronous standby, paths that
-- wrote nothing (a repeated acquire returning its own hold, a release that
-- found nothing) did not wait for the standby either, so a grant whose
-- first answer was lost, or a release whose standby wait was cancelled, was
-- acknowledged before the standby had it.
--
-- sqldlm_epoch holds one row: the timeline the epoch belongs to, the epoch,
-- when it changed, and until when grants are frozen. sqldlm_current_epoch()
-- reads it and compares the timeline with the server's (the first eight
-- hex digits of pg_walfile_name(pg_current_wal_lsn())); on a standby it
-- raises read_only_sql_transaction (25006), which the client treats as a
-- connection failure and retries (on the primary, with a multi-host DSN).
-- When the timelines differ (the first sqldlm statement on a newly promoted
-- primary), sqldlm_epoch_change, under the row's lock: epoch + 1, the new
-- timeline, changed_at now, freeze_until now + the longest TTL among the
-- leases it knows, and the token sequence raised by 2^32 (fewer grants than
-- that fit in any replication lag, so no token handed out by the old
-- primary comes again). Setting a sequence needs UPDATE on it, which the
-- least-privilege runtime role does not have: sqldlm_epoch_change is
-- SECURITY DEFINER (it runs as the migrating role, which owns the
-- sequence), with search_path pg_catalog, pg_temp; it takes the epoch
-- table's regclass, checks that it is a table sqldlm_epoch of its own
-- owner, reaches that schema's tables by qualified names, computes the
-- timeline itself, and changes nothing unless the timeline changed.
--
-- The roles granted privileges on sqldlm_leases get the same on
-- sqldlm_epoch (a runtime role granted ALL TABLES before this migration
-- would otherwise fail every grant and renewal until granted again).
--
-- Leases get an epoch column whose default is the current epoch (so every
-- CreateLease, of this version's clients or older ones, stamps it). A
-- renewal matches only a lease of the current epoch, so a lease from before
-- a failover is lost at its next renewal (its holder told, ErrLost), and
-- sqldlm_acquire answers lease_lost for it (the client then makes a new
-- lease). Until freeze_until, sqldlm_acquire grants and queues nothing: it
-- answers blocked by '(failover)' with the freeze's remaining time as the
-- expiry. By then every holder of the older epoch has passed its local
-- trust deadline (at most its last acknowledged renewal + TTL, before the
-- failover) or been told at a renewal, and every lease of the older epoch
-- has expired on the new primary (its expiry is at most its last
-- replicated renewal + its TTL), so its holds are taken over, reaped or
-- deleted with it, and its waiter rows are passed over: nothing that came
-- back wedges a name for longer than the freeze. sqldlm_release_next hands
-- over only as sqldlm_acquire would grant: not during the freeze, and only
-- to waiters whose lease is of the current epoch.
--
-- A repeated acquire that returns its own hold, and a release that deletes
-- nothing, now write a transactional WAL message
-- (pg_logical_emit_message(true, 'sqldlm', ''), executable by PUBLIC), so
-- their commit writes a record after the earlier commit and, with
-- synchronous_commit = on, waits for the standby like the grant or release
-- it reports. A commit that wrote no WAL does not wait, and neither does
-- one that only assigned a transaction id (pg_current_xact_id(): PostgreSQL
-- waits for the standby only when the transaction both has an xid and
-- wrote WAL). ConfirmGrant, the waiter's read of a handed-over grant, does
-- the same in the client's statement. Logical decoding shows these as
-- messages with the prefix 'sqldlm'.
--
-- Cost when nothing changed: sqldlm_acquire and every renewal run
-- sqldlm_current_epoch once (pg_is_in_recovery, pg_current_wal_lsn,
-- pg_walfile_name and a read of the one-row table by its key), and
-- sqldlm_acquire reads its own lease's epoch by the lease's key; a
-- handover (sqldlm_release_next with someone waiting) runs
-- sqldlm_current_epoch too. No row is written and no lock taken.
--
-- Down drops the epoch column, both functions and the table, and restores
-- version 7's sqldlm_acquire, sqldlm_release and sqldlm_release_next
-- exactly. The raised token sequence stays raised (tokens only need to
-- grow).

-- +goose Up

CREATE TABLE sqldlm_epoch (
    id           integer PRIMARY KEY CHECK (id = 1),
    timeline     integer NOT NULL,
    epoch        bigint NOT NULL,
    changed_at   timestamptz NOT NULL,
    freeze_until timestamptz NOT NULL
);
INSERT INTO sqldlm_epoch (id, timeline, epoch, changed_at, freeze_until)
SELECT 1, ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::integer, 1, clock_timestamp(), '-infinity';

-- Every grant and renewal reads sqldlm_epoch: the roles that may read and
-- write sqldlm_leases get the same on it, so that a runtime role granted
-- the tables before this migration keeps working without a new GRANT.
-- +goose StatementBegin
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT a.grantee, a.privilege_type
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid = 'sqldlm_leases'::regclass AND a.grantee <> c.relowner
           AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
    LOOP
        EXECUTE format('GRANT %s ON sqldlm_epoch TO %s', r.privilege_type,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- sqldlm_epoch_change moves the epoch row of p_epoch_table's schema to this
-- server's timeline if it is on another one (epoch + 1, a freeze of the
-- longest lease TTL, the token sequence raised by 2^32), and returns the
-- epoch and the end of its freeze. Of concurrent callers after a
-- promotion, one changes the row; the others wait for its lock, find the
-- timeline current, and read the new row.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_epoch_change(p_epoch_table regclass, OUT o_epoch bigint, OUT o_freeze_until timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_schema   text;
    v_timeline integer;
    v_seq      regclass;
BEGIN
    SELECT n.nspname INTO v_schema
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = p_epoch_table AND c.relname = 'sqldlm_epoch' AND c.relkind = 'r'
       AND c.relowner = to_regrole(current_user);
    IF v_schema IS NULL THEN
        RAISE EXCEPTION 'sqldlm_epoch_change: % is not an sqldlm_epoch table owned by %', p_epoch_table, current_user
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'sqldlm: this server is a standby (in recovery), not the primary'
            USING ERRCODE = 'read_only_sql_transaction';
    END IF;
    v_timeline := ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::integer;
    EXECUTE format('UPDATE %1$I.sqldlm_epoch SET epoch = epoch + 1, timeline = $1, changed_at = clock_timestamp(),
                           freeze_until = clock_timestamp()
                               + (SELECT coalesce(max(ttl_us), 0) FROM %1$I.sqldlm_leases) * interval ''1 microsecond''
                     WHERE id = 1 AND timeline <> $1
                    RETURNING epoch, freeze_until', v_schema)
       INTO o_epoch, o_freeze_until USING v_timeline;
    IF o_epoch IS NOT NULL THEN
        v_seq := pg_get_serial_sequence(format('%I.sqldlm_holders', v_schema), 'token')::regclass;
        PERFORM setval(v_seq, coalesce(pg_sequence_last_value(v_seq), 0) + 4294967296);
        RAISE LOG 'sqldlm: failover epoch % (timeline %) in schema %: grants frozen until %, tokens raised by 2^32',
            o_epoch, v_timeline, v_schema, o_freeze_until;
        RETURN;
    END IF;
    EXECUTE format('SELECT epoch, freeze_until FROM %I.sqldlm_epoch WHERE id = 1', v_schema)
       INTO o_epoch, o_freeze_until;
END
$$;
-- +goose StatementEnd

-- sqldlm_current_epoch returns the current epoch and the end of its freeze
-- (in the past unless a failover happened within the longest TTL): a plain
-- read of the row when the timeline has not changed.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_current_epoch(OUT o_epoch bigint, OUT o_freeze_until timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_timeline integer;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'sqldlm: this server is a standby (in recovery), not the primary'
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = 'Connect to the primary; with several hosts in the DSN, set target_session_attrs=read-write.';
    END IF;
    SELECT e.epoch, e.freeze_until, e.timeline INTO o_epoch, o_freeze_until, v_timeline
      FROM sqldlm_epoch e WHERE e.id = 1;
    IF v_timeline IS DISTINCT FROM ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::integer THEN
        SELECT c.o_epoch, c.o_freeze_until INTO o_epoch, o_freeze_until
          FROM sqldlm_epoch_change('sqldlm_epoch'::regclass) c;
    END IF;
END
$$;
-- +goose StatementEnd

ALTER TABLE sqldlm_leases ADD COLUMN epoch bigint NOT NULL DEFAULT 1;
ALTER TABLE sqldlm_leases ALTER COLUMN epoch SET DEFAULT (sqldlm_current_epoch()).o_epoch;

-- sqldlm_acquire: version 7's, with the epoch and freeze checks first, and a
-- WAL record on a repeat.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_acquire(p_name text, p_lease bigint, p_request bigint, p_mode text,
    p_enqueue boolean, p_upgrade bigint, p_payload text, p_delay_us bigint,
    OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text,
    OUT o_expires_us bigint, OUT o_ahead integer,
    OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[],
    OUT o_took_modes text[], OUT o_took_expires timestamp with time zone[], OUT o_took_broken boolean[],
    OUT o_took_payloads text[])
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

-- sqldlm_release: version 7's, with a WAL record when nothing was deleted.
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

-- sqldlm_release_next: version 7's, with a WAL record when nothing was
-- deleted, and no handover during the freeze or to an older epoch's waiter.
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

-- +goose Down

-- Version 7's functions, exactly.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_acquire(p_name text, p_lease bigint, p_request bigint, p_mode text,
    p_enqueue boolean, p_upgrade bigint, p_payload text, p_delay_us bigint,
    OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text,
    OUT o_expires_us bigint, OUT o_ahead integer,
    OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[],
    OUT o_took_modes text[], OUT o_took_expires timestamp with time zone[], OUT o_took_broken boolean[],
    OUT o_took_payloads text[])
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
        RETURN false;
    ELSIF NOT v_waiting THEN
        -- Nobody waited: this was sqldlm_release, inline. A waiter that
        -- queued meanwhile is woken, as sqldlm_release does.
        IF EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name) THEN
            PERFORM sqldlm_wake(p_name);
        END IF;
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
                                     AND l.expires_at > clock_timestamp());
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

ALTER TABLE sqldlm_leases DROP COLUMN epoch;
DROP FUNCTION sqldlm_current_epoch();
DROP FUNCTION sqldlm_epoch_change(regclass);
DROP TABLE sqldlm_epoch;
