-- sqldlm schema version 3 for PostgreSQL: the audit log and its setting,
-- and acquires made in the caller's transaction.
--
-- sqldlm_settings has exactly one row (id = 1). While audit is true, every
-- function that grants, upgrades, downgrades or deletes a hold writes one
-- row per hold into sqldlm_audit, in the same transaction as the change,
-- with the server's clock; each reads the setting once per call (the one
-- row, joined into the statement that writes the rows, or read into a
-- variable where several statements write them). sqldlm_reap deletes audit
-- rows older than audit_retention_us whether or not audit is on. Events:
--   grant      a new hold (sqldlm_acquire, sqldlm_acquire_tx): the new hold;
--   upgrade    the exclusive hold an upgrade created: detail 'from token N'
--              (N the upgraded shared hold's token);
--   downgrade  the hold after sqldlm_downgrade (mode 'S');
--   release    a hold deleted by its own client: detail '' (sqldlm_release,
--              in or out of the caller's transaction), 'abandoned'
--              (sqldlm_abandon), 'lease closed' (sqldlm_delete_lease);
--   takeover   a hold of a dead lease that a grant deleted: the dead hold,
--              detail 'by <owner of the new hold>'; written before the
--              grant's (or upgrade's) row;
--   expire     a hold of a dead lease that sqldlm_reap deleted;
--   break      a hold of a lease sqldlm_break marked broken: detail '' for
--              holds of the broken name, 'with <broken name>' for the
--              lease's holds of other names.
-- owner is the lease's owner, '' when the lease row is already gone.
--
-- sqldlm_pending holds one row per acquire made inside a caller's
-- transaction: the client inserts it first, in its own transaction; a grant
-- by sqldlm_acquire_tx deletes it inside the caller's transaction. Once
-- that call has returned, the row is gone if that transaction committed, is
-- there but locked (by the delete) while it is open, and is there and
-- unlocked if it rolled back or nothing was granted: sqldlm_pending_outcome
-- tells these apart without waiting. sqldlm_delete_lease and sqldlm_reap
-- delete the rows of the leases they delete.
--
-- Functions whose signature is unchanged are replaced in place; sqldlm_reap
-- gains a result column (o_audit_rows), so it is dropped and created again
-- (callers select its columns by name). Down restores version 2's text.

-- +goose Up
CREATE TABLE sqldlm_settings (
    id                 smallint PRIMARY KEY CHECK (id = 1),
    audit              boolean  NOT NULL DEFAULT false,
    audit_retention_us bigint   NOT NULL DEFAULT 604800000000 CHECK (audit_retention_us >= 1000000) -- 7 days
);
INSERT INTO sqldlm_settings (id) VALUES (1);

CREATE TABLE sqldlm_audit (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- order of writing
    at       timestamptz NOT NULL,                -- clock_timestamp()
    event    text NOT NULL,                       -- 'grant','upgrade','downgrade','release','takeover','expire','break'
    name     text COLLATE "C" NOT NULL,
    owner    text NOT NULL,                       -- '' when the lease row is gone
    lease_id bigint NOT NULL,
    token    bigint NOT NULL,
    mode     char(1) NOT NULL,                    -- 'S' or 'X'
    payload  text NOT NULL DEFAULT '',
    detail   text NOT NULL DEFAULT ''
);
CREATE INDEX sqldlm_audit_name ON sqldlm_audit (name, id);
CREATE INDEX sqldlm_audit_at ON sqldlm_audit (at);

CREATE TABLE sqldlm_pending (                     -- requests sqldlm_acquire_tx is making
    lease_id   bigint NOT NULL,
    request_id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (lease_id, request_id)
);

-- sqldlm_acquire: version 1's, plus the audit rows of a grant: the
-- takeover rows of the holds it deletes, then the grant's or upgrade's row.
-- The setting is read once, on the way to a grant; nothing is written for a
-- refusal or a repeated request.
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

-- sqldlm_acquire_tx is sqldlm_acquire without queueing or upgrade, run in
-- the caller's transaction, for the request (p_lease, p_request) that the
-- client recorded in sqldlm_pending beforehand. Same results. It refuses
-- (SQLSTATE SQD01, before anything else) a transaction that does not run
-- at READ COMMITTED: sqldlm_acquire decides on fresh snapshots taken after
-- its row locks, which only READ COMMITTED gives each statement. When the
-- request is granted (a new hold, or the one a repeat of it already
-- obtained), it deletes the pending record, which stays locked by this
-- transaction until it ends and is gone once it commits; any other
-- outcome leaves the record alone. The row locks taken (the name's row FOR
-- UPDATE, the own lease FOR KEY SHARE, which does not block its renewal,
-- the dead leases taken over FOR NO KEY UPDATE) are held until the caller's
-- transaction ends: other grants of the name wait for it.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_acquire_tx(p_name text, p_lease bigint, p_request bigint, p_mode text,
    p_payload text, p_delay_us bigint,
    OUT o_status text, OUT o_token bigint, OUT o_owner text, OUT o_mode text,
    OUT o_expires_us bigint, OUT o_ahead integer,
    OUT o_took_owners text[], OUT o_took_leases bigint[], OUT o_took_tokens bigint[],
    OUT o_took_modes text[], OUT o_took_expires timestamptz[], OUT o_took_broken boolean[],
    OUT o_took_payloads text[])
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd

-- sqldlm_pending_outcome tells what became of the request (p_lease,
-- p_request) recorded in sqldlm_pending, once its sqldlm_acquire_tx call has
-- returned, without waiting for any lock: 1 (open) while the transaction
-- that granted it has not ended, 2 (committed) once it has committed, 3
-- (not committed) when no grant has committed and none can any more; it
-- then deletes the record. Written for READ COMMITTED, its own transaction:
--   1. lock the record FOR UPDATE SKIP LOCKED and delete it: done, 3. (A
--      record deleted by a committed transaction is not found; one deleted
--      by an open transaction is locked by it, and skipped.)
--   2. otherwise read it plainly, with a new snapshot: still visible means
--      its delete has not committed, 1; gone means it has, 2. (Were the
--      open transaction to roll back between the two statements, 1 is
--      still true of the moment the lock was refused; a later call says 3.)
-- A record whose lease was deleted is gone too (sqldlm_delete_lease and
-- sqldlm_reap delete them): 2, as the lease and every hold are gone.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_pending_outcome(p_lease bigint, p_request bigint) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sqldlm_pending p
     WHERE (p.lease_id, p.request_id) IN (
        SELECT q.lease_id, q.request_id FROM sqldlm_pending q
         WHERE q.lease_id = p_lease AND q.request_id = p_request
           FOR UPDATE SKIP LOCKED);
    IF FOUND THEN
        RETURN 3;
    END IF;
    PERFORM 1 FROM sqldlm_pending WHERE lease_id = p_lease AND request_id = p_request;
    IF FOUND THEN
        RETURN 1;
    END IF;
    RETURN 2;
END
$$;
-- +goose StatementEnd

-- sqldlm_release: version 1's, plus its audit row. Used in and out of the
-- caller's transaction.
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

-- sqldlm_abandon: version 1's, plus a release row ('abandoned') for each
-- hold it deletes.
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

-- sqldlm_downgrade: version 1's, plus its downgrade row (mode 'S').
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

-- sqldlm_delete_lease: version 1's, plus a release row ('lease closed') for
-- each hold it deletes, and the deletion of the lease's pending records.
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

-- sqldlm_reap: version 1's, plus an expire row for each hold it deletes;
-- the deletion of the pending records of the leases it deletes and of
-- leases already gone (those an open transaction has locked are skipped,
-- a later pass gets them); and the deletion of up to p_limit audit rows
-- older than the retention, counted in o_audit_rows.
DROP FUNCTION sqldlm_reap(integer, bigint);
-- +goose StatementBegin
CREATE FUNCTION sqldlm_reap(p_limit integer, p_idle_us bigint,
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

-- sqldlm_break: version 2's, plus a break row for each hold of the leases
-- it marks broken, those of p_name first.
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

-- +goose Down
DROP FUNCTION sqldlm_pending_outcome(bigint, bigint);
DROP FUNCTION sqldlm_acquire_tx(text, bigint, bigint, text, text, bigint);

-- Version 1's and 2's text of the functions Up replaced.
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

    -- Granted. Nothing was written before this point.
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
    -- locked, and marked broken only below).
    WITH d AS (
        DELETE FROM sqldlm_holders h
         WHERE h.name = p_name
           AND (h.lease_id = ANY (v_dead)
                OR (h.token IS DISTINCT FROM v_upgrade
                    AND (p_mode = 'X' OR h.mode = 'X')
                    AND NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = h.lease_id)))
        RETURNING h.token, h.lease_id, h.mode, h.payload)
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
    UPDATE sqldlm_locks SET token = o_token, updated_at = v_now WHERE name = p_name;
    DELETE FROM sqldlm_waiters WHERE lease_id = p_lease AND request_id = p_request;
    o_status := 'granted';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name;
    IF NOT FOUND THEN
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
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = p_lease AND request_id = p_request RETURNING name)
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
BEGIN
    -- The lease check reads the statement's snapshot: a renewal committed
    -- meanwhile can only make it fail near expiry (safe), and a takeover only
    -- breaks a lease that has already expired by the clock.
    UPDATE sqldlm_holders SET mode = 'S'
     WHERE token = p_token AND lease_id = p_lease AND name = p_name
       AND EXISTS (SELECT 1 FROM sqldlm_leases
                    WHERE id = p_lease AND broken_at IS NULL AND expires_at > clock_timestamp());
    IF NOT FOUND THEN
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
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = p_lease RETURNING name)
    SELECT array_agg(DISTINCT name) INTO v_held FROM d;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = p_lease RETURNING name)
    SELECT array_agg(DISTINCT name) INTO v_waiting FROM d;
    DELETE FROM sqldlm_leases WHERE id = p_lease;
    PERFORM pg_notify(sqldlm_channel(), n) FROM (SELECT DISTINCT unnest(v_held || v_waiting) AS n) s;
    RETURN coalesce(v_held, '{}');
END
$$;
-- +goose StatementEnd

DROP FUNCTION sqldlm_reap(integer, bigint);
-- +goose StatementBegin
CREATE FUNCTION sqldlm_reap(p_limit integer, p_idle_us bigint,
    OUT o_leases integer, OUT o_holds integer, OUT o_waiters integer, OUT o_idle_locks integer,
    OUT o_freed text[])
LANGUAGE plpgsql AS $$
DECLARE
    v_ids     bigint[];
    v_names   text[];
    v_waiting text[];
    v_now     timestamptz;
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
    WITH d AS (DELETE FROM sqldlm_holders WHERE lease_id = ANY (v_ids) RETURNING name)
    SELECT count(*), array_agg(DISTINCT name) INTO o_holds, o_freed FROM d;
    WITH d AS (DELETE FROM sqldlm_waiters WHERE lease_id = ANY (v_ids) RETURNING name)
    SELECT count(*), array_agg(DISTINCT name) INTO o_waiters, v_waiting FROM d;
    DELETE FROM sqldlm_leases WHERE id = ANY (v_ids);
    GET DIAGNOSTICS o_leases = ROW_COUNT;

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

DROP TABLE sqldlm_pending;
DROP TABLE sqldlm_audit;
DROP TABLE sqldlm_settings;
