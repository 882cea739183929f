-- sqldlm schema version 1 for PostgreSQL 12+.
--
-- The tables are created in the current schema (search_path). Times are
-- timestamptz written from clock_timestamp(), the server's clock: no client
-- clock is ever stored or compared.
--
-- Fencing tokens come from the identity sequence of sqldlm_holders: every
-- grant (and every upgrade) inserts a holder row and so draws a new value. A
-- sequence never goes back, across deleted rows, garbage-collected names and
-- restarts, so a name's tokens strictly increase without a per-name counter
-- that could be lost with its row.

-- +goose Up
CREATE TABLE sqldlm_leases (
    id         bigint      PRIMARY KEY,               -- random, chosen by the client
    owner      text        NOT NULL CHECK (octet_length(owner) BETWEEN 1 AND 255),
    ttl_us     bigint      NOT NULL CHECK (ttl_us > 0), -- renewal extends expires_at by this
    created_at timestamptz NOT NULL,
    renewed_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    broken_at  timestamptz                            -- set when a takeover or an operator declared the lease dead
);
CREATE INDEX sqldlm_leases_expires_at ON sqldlm_leases (expires_at);

-- One row per name that is held, awaited or was recently used: the row every
-- grant of the name locks, so grants of one name serialize on it.
CREATE TABLE sqldlm_locks (
    name       text COLLATE "C" PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 255),
    token      bigint      NOT NULL DEFAULT 0,        -- highest token granted for the name
    updated_at timestamptz NOT NULL                   -- last grant; idle rows are collected after a while
);
CREATE INDEX sqldlm_locks_updated_at ON sqldlm_locks (updated_at);

CREATE TABLE sqldlm_holders (
    token       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- the fencing token
    name        text COLLATE "C" NOT NULL,
    lease_id    bigint      NOT NULL,
    request_id  bigint      NOT NULL,                 -- the client's id of the acquire, for idempotent retries
    mode        char(1)     NOT NULL CHECK (mode IN ('S', 'X')),
    acquired_at timestamptz NOT NULL,
    payload     text        NOT NULL DEFAULT '' CHECK (octet_length(payload) <= 1024) -- what the holder is doing
);
CREATE INDEX sqldlm_holders_name ON sqldlm_holders (name);
CREATE INDEX sqldlm_holders_lease ON sqldlm_holders (lease_id, request_id);

CREATE TABLE sqldlm_waiters (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- arrival order
    name          text COLLATE "C" NOT NULL,
    lease_id      bigint      NOT NULL,
    request_id    bigint      NOT NULL,
    mode          char(1)     NOT NULL CHECK (mode IN ('S', 'X')),
    upgrade_token bigint,                             -- the shared hold this waiter upgrades, if any
    since         timestamptz NOT NULL
);
CREATE INDEX sqldlm_waiters_name ON sqldlm_waiters (name, id);
CREATE UNIQUE INDEX sqldlm_waiters_lease ON sqldlm_waiters (lease_id, request_id);

-- The lock operations are PL/pgSQL functions, so that each one is a single
-- statement: one round trip and one commit in autocommit mode. They run in
-- the caller's current schema (no schema-qualified names, no SET search_path)
-- and at the session's isolation level; they are written for READ COMMITTED,
-- where every statement of a function takes a fresh snapshot. Every expiry
-- decision reads clock_timestamp(), never now() (frozen at the start of the
-- transaction), and is taken after the row locks it depends on.
--
-- A lease is live while broken_at IS NULL AND expires_at > clock_timestamp().
-- A dead lease has been dead since least(expires_at, coalesce(broken_at,
-- expires_at)); with a lock delay, a grant takes over its holds only once it
-- has been dead that long.
--
-- Row locks, always taken in this order, so that operations cannot deadlock:
--   1. the name's row in sqldlm_locks, FOR UPDATE (grants of one name and the
--      first enqueue of an upgrade serialize on it; every grant updates it);
--   2. lease rows: the requester's own lease FOR KEY SHARE (keeps it from
--      being deleted under a grant or a new waiter row, without blocking its
--      renewal), then the dead leases to take over FOR NO KEY UPDATE, in id
--      order (serializes with renewal, whose UPDATE takes the same lock);
--      DeleteLease and Reap lock the leases they delete FOR UPDATE first;
--   3. holder and waiter rows. Fence locks a holder row FOR KEY SHARE, after
--      its lease row; a release of it waits for the fenced transaction, and
--      a takeover, which must delete it, is refused (Blocked) until then.
-- Acquire waits only for row locks held briefly; Reap never waits for lease
-- or lock rows (SKIP LOCKED).
--
-- Operations that free holds, or let shared waiters in, or remove a waiter
-- that may have kept others out, send pg_notify(sqldlm_channel(), name) in
-- their own transaction; the channel is derived from the schema so that
-- schemas in one database do not wake each other.

-- +goose StatementBegin
CREATE FUNCTION sqldlm_channel() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'sqldlm_' || substr(md5(current_schema()), 1, 16)
$$;
-- +goose StatementEnd

-- sqldlm_evaluate reads, in one snapshot, everything a request of p_name by
-- (p_lease, p_request) in mode p_mode, upgrading p_upgrade (or NULL), with
-- lock delay p_delay, is decided on, judging leases by p_now:
--   lease_live        the request's lease is live;
--   held_token        the hold this request already obtained (a retry);
--   waiter_id         the request's waiter row, if queued;
--   upgrade_held      no upgrade, or the shared hold to upgrade exists;
--   upgrade_conflict  a live waiter upgrades another hold of the name;
--   blocker_*         of the conflicting holds that keep the request out
--                     (those of live leases, and those of leases dead for
--                     less than p_delay), the one that does so longest:
--                     blocker_expires_us is the time until its lease
--                     expires, or until its lock delay has passed;
--   waiters_ahead     live waiters to serve first: none for an upgrade
--                     (upgrades go first; a competing upgrade is refused),
--                     otherwise every pending upgrade and every earlier
--                     waiter whose mode conflicts;
--   dead_leases       the leases, in id order, of conflicting holds that are
--                     not live and have been dead for p_delay (the holds a
--                     grant would take over).
-- One SQL statement (inlined into the caller's plan where PostgreSQL can).
-- +goose StatementBegin
CREATE FUNCTION sqldlm_evaluate(p_name text, p_lease bigint, p_request bigint, p_mode text,
    p_upgrade bigint, p_delay interval, p_now timestamptz)
RETURNS TABLE (lease_live boolean, held_token bigint, waiter_id bigint, upgrade_held boolean,
    upgrade_conflict boolean, blocker_owner text, blocker_mode text, blocker_expires_us bigint,
    waiters_ahead integer, dead_leases bigint[])
LANGUAGE sql STABLE AS $$
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
$$;
-- +goose StatementEnd

-- sqldlm_acquire grants a hold of p_name to the request (p_lease,
-- p_request) in mode p_mode ('S' or 'X'), or upgrades the caller's shared
-- hold p_upgrade (0 or NULL: no upgrade) to exclusive. o_status is one of
-- granted (o_token), blocked (o_owner, o_mode, o_expires_us describe the
-- conflicting hold that keeps the request out longest, if any: o_expires_us
-- is the time until its live lease expires, or until the lock delay of its
-- dead lease has passed; o_ahead counts the waiters ahead), lease_lost,
-- not_held, upgrade_conflict. The new hold stores p_payload; an upgrade with
-- an empty p_payload keeps the upgraded hold's. p_delay_us is the lock
-- delay: a conflicting hold of a dead lease is taken over only once the
-- lease has been dead for that many microseconds. A grant that took
-- the name over from dead leases reports the conflicting holds it deleted,
-- in token order, as parallel arrays (NULL when there were none, and on a
-- repeated request): o_took_owners ('' if the lease row is gone),
-- o_took_leases, o_took_tokens, o_took_modes, o_took_expires (the lease's
-- expires_at; the epoch if its row is gone), o_took_broken (the lease had
-- broken_at set before this grant: broken by an operator or by an earlier
-- takeover, rather than just expired) and o_took_payloads.
--
-- Phase 1 only reads (no row locks, no writes) and answers everything except
-- a grant: a blocked request writes nothing, except its waiter row the first
-- time it asks to be queued. Phase 2 takes the row locks in the global order,
-- decides again with a snapshot and a clock taken after the locks, takes
-- over the holds of dead leases (unless a fenced transaction pins one: then
-- it is blocked) and grants.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_acquire(p_name text, p_lease bigint, p_request bigint, p_mode text,
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

-- sqldlm_release deletes a hold and reports whether it existed.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_release(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
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

-- sqldlm_abandon withdraws a request: it deletes its waiter row and any hold
-- it obtained, and returns the names of the deleted holds.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_abandon(p_lease bigint, p_request bigint) RETURNS text[]
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

-- sqldlm_downgrade turns a hold of a live lease into a shared hold, keeping
-- its token, and reports whether it did.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_downgrade(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
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

-- sqldlm_set_payload replaces the payload of a hold of a live lease and
-- reports whether it did. Like a renewal it updates only a non-key column, so
-- a fence's FOR KEY SHARE on the hold does not block it; nobody is notified.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_set_payload(p_name text, p_lease bigint, p_token bigint, p_payload text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- The lease check reads the statement's snapshot, as in sqldlm_downgrade.
    UPDATE sqldlm_holders SET payload = p_payload
     WHERE token = p_token AND lease_id = p_lease AND name = p_name
       AND EXISTS (SELECT 1 FROM sqldlm_leases
                    WHERE id = p_lease AND broken_at IS NULL AND expires_at > clock_timestamp());
    RETURN FOUND;
END
$$;
-- +goose StatementEnd

-- sqldlm_fence runs in the caller's transaction: it locks the lease and then
-- the hold FOR KEY SHARE (a takeover or a release deletes the hold row, so
-- neither can commit before the transaction ends; a renewal updates only
-- non-key columns of the lease and is not blocked), and reports whether the
-- hold exists and its lease is live by the clock read after the locks. It
-- bounds how long the transaction may then sit idle (p_idle_ms > 0) with a
-- transaction-local idle_in_transaction_session_timeout.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_fence(p_name text, p_lease bigint, p_token bigint, p_idle_ms integer) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF p_idle_ms > 0 THEN
        PERFORM set_config('idle_in_transaction_session_timeout', p_idle_ms::text, true);
    END IF;
    PERFORM 1 FROM sqldlm_leases WHERE id = p_lease FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM sqldlm_holders WHERE token = p_token AND lease_id = p_lease AND name = p_name FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    RETURN coalesce((SELECT broken_at IS NULL AND expires_at > clock_timestamp()
                       FROM sqldlm_leases WHERE id = p_lease), false);
END
$$;
-- +goose StatementEnd

-- sqldlm_delete_lease deletes a lease with its holds and waiters, and returns
-- the names of the deleted holds.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_delete_lease(p_lease bigint) RETURNS text[]
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

-- sqldlm_reap deletes up to p_limit dead leases with their holds and
-- waiters, and up to p_limit lock rows unused for p_idle_us microseconds
-- that have no holds or waiters. It skips rows other transactions have
-- locked (they are busy, or fenced); a later pass gets them.
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

-- +goose Down
DROP FUNCTION sqldlm_reap(integer, bigint);
DROP FUNCTION sqldlm_delete_lease(bigint);
DROP FUNCTION sqldlm_fence(text, bigint, bigint, integer);
DROP FUNCTION sqldlm_downgrade(text, bigint, bigint);
DROP FUNCTION sqldlm_abandon(bigint, bigint);
DROP FUNCTION sqldlm_release(text, bigint, bigint);
DROP FUNCTION sqldlm_set_payload(text, bigint, bigint, text);
DROP FUNCTION sqldlm_acquire(text, bigint, bigint, text, boolean, bigint, text, bigint);
DROP FUNCTION sqldlm_evaluate(text, bigint, bigint, text, bigint, interval, timestamptz);
DROP FUNCTION sqldlm_channel();
DROP TABLE sqldlm_waiters;
DROP TABLE sqldlm_holders;
DROP TABLE sqldlm_locks;
DROP TABLE sqldlm_leases;
