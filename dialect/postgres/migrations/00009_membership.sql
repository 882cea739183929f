-- sqldlm schema version 9 for PostgreSQL: group membership (issue 16).
--
-- A member is a row of sqldlm_members that hangs off a lease: it is live
-- exactly while its lease is live by the server's clock, so members add no
-- heartbeat of their own. Each group has a row in sqldlm_groups whose
-- generation counts the group's changes.
--
-- The generation a read reports is epoch * 2^32 + the stored generation +
-- the number of the group's member rows whose lease is broken or gone. A
-- read never decides an expiry by the clock alone (a renewal that ran
-- before the expiry may not have committed yet): a reader that finds a
-- member whose lease has expired unbroken sweeps the group
-- (sqldlm_group_sweep), and the sweep's UPDATE decides after the lease
-- row's lock. Join,
-- Leave and SetMeta lock the group's row, sweep the group (below), and add
-- one to the stored generation when they change a member. The sweep marks
-- broken the expired leases of the group's members, with an UPDATE that
-- re-checks the expiry after the lease row's lock (a renewal in flight
-- wins, and a broken lease is never renewed: the member learns it is out
-- at its next renewal at the latest, and its client's trust deadline has
-- passed before the expiry anyway), then deletes the member rows of leases
-- that are broken or gone and adds their number to the stored generation.
-- So a dead member counts once, first as not live, then as swept; the
-- generation never goes back and changes with every join, leave, update and
-- expiry. The epoch term keeps it growing across a failover that lost
-- commits (fewer than 2^32 changes per group are assumed).
--
-- A member's incarnation is the generation right after its join: a rejoin
-- always has a higher one. A request is (lease, request id): a repeated
-- join returns the membership it made; a leave records the request in
-- sqldlm_member_withdrawn, and a join of a recorded request joins nothing,
-- however late its statement runs. Records go with the sweep once their
-- lease is broken or gone.
--
-- Until freeze_until (after a promotion, see version 8) an expired lease is
-- not swept, so its member stays: the expiry a new primary has may be
-- older than the one the member's client trusts.
--
-- Every change notifies the schema's channel (sqldlm_channel()) with the
-- payload 'sqldlm:group:<group>', at commit: a watcher on PostgreSQL reads
-- the group at once instead of at its next poll. Renewals notify nothing,
-- and an expiry nobody writes is seen by the watchers' polls.
--
-- Lock order: the group's row, then lease rows (the sweep's UPDATE). The
-- lock functions never lock a group row, so the two halves cannot
-- deadlock; two sweeps updating the same leases in different orders can
-- (40P01), which the client retries.
--
-- When the audit log is on, joins, leaves, meta updates and the members a
-- sweep finds dead (event 'expire', detail 'member') are written to
-- sqldlm_audit in the same statement, under the name
-- 'sqldlm:group:<group>:<id>', with the incarnation as the token.
--
-- The roles granted privileges on sqldlm_leases get the same on the new
-- tables, as in version 8.

-- +goose Up

CREATE TABLE sqldlm_groups (
    name       text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 255),
    generation bigint NOT NULL DEFAULT 0
);

CREATE TABLE sqldlm_members (
    group_name  text NOT NULL REFERENCES sqldlm_groups (name),
    member_id   text NOT NULL CHECK (octet_length(member_id) BETWEEN 1 AND 255),
    lease_id    bigint NOT NULL,
    request_id  bigint NOT NULL,
    incarnation bigint NOT NULL,
    meta        text NOT NULL DEFAULT '',
    weight      double precision NOT NULL DEFAULT 1 CHECK (weight > 0),
    joined_at   timestamptz NOT NULL,
    PRIMARY KEY (group_name, member_id)
);
CREATE INDEX sqldlm_members_lease ON sqldlm_members (lease_id);

CREATE TABLE sqldlm_member_withdrawn (
    lease_id     bigint NOT NULL,
    request_id   bigint NOT NULL,
    group_name   text NOT NULL,
    withdrawn_at timestamptz NOT NULL,
    PRIMARY KEY (lease_id, request_id)
);
CREATE INDEX sqldlm_member_withdrawn_group ON sqldlm_member_withdrawn (group_name);

-- +goose StatementBegin
DO $$
DECLARE
    r record;
    t text;
BEGIN
    FOR r IN
        SELECT a.grantee, a.privilege_type
          FROM pg_class c, aclexplode(c.relacl) a
         WHERE c.oid = 'sqldlm_leases'::regclass AND a.grantee <> c.relowner
           AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
    LOOP
        FOREACH t IN ARRAY ARRAY['sqldlm_groups', 'sqldlm_members', 'sqldlm_member_withdrawn'] LOOP
            EXECUTE format('GRANT %s ON %I TO %s', r.privilege_type, t,
                           CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
        END LOOP;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- sqldlm_group_lock makes sure the group's row exists, locks it, sweeps the
-- group, and returns the stored generation with the epoch term, the
-- server's time and the end of the failover freeze.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_group_lock(p_group text, OUT o_generation bigint, OUT o_epoch bigint,
    OUT o_now timestamptz, OUT o_freeze timestamptz)
LANGUAGE plpgsql
SET lock_timeout TO '5s'
AS $$
DECLARE
    v_swept bigint;
BEGIN
    SELECT e.o_epoch, e.o_freeze_until INTO o_epoch, o_freeze FROM sqldlm_current_epoch() e;
    INSERT INTO sqldlm_groups (name) VALUES (p_group) ON CONFLICT (name) DO NOTHING;
    SELECT g.generation INTO o_generation FROM sqldlm_groups g WHERE g.name = p_group FOR UPDATE;
    o_now := clock_timestamp();
    UPDATE sqldlm_leases l SET broken_at = o_now
     WHERE l.id IN (SELECT m.lease_id FROM sqldlm_members m WHERE m.group_name = p_group)
       AND l.broken_at IS NULL AND l.expires_at <= o_now AND o_now >= o_freeze;
    WITH d AS (
        DELETE FROM sqldlm_members m
         WHERE m.group_name = p_group
           AND NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = m.lease_id AND l.broken_at IS NULL)
        RETURNING m.*
    ), a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT o_now, 'expire', 'sqldlm:group:' || d.group_name || ':' || d.member_id, coalesce(l.owner, ''),
               d.lease_id, d.incarnation, 'X', d.meta, 'member'
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
    )
    SELECT count(*) INTO v_swept FROM d;
    DELETE FROM sqldlm_member_withdrawn w
     WHERE w.group_name = p_group
       AND NOT EXISTS (SELECT 1 FROM sqldlm_leases l WHERE l.id = w.lease_id AND l.broken_at IS NULL);
    IF v_swept > 0 THEN
        o_generation := o_generation + v_swept;
        UPDATE sqldlm_groups SET generation = o_generation WHERE name = p_group;
        PERFORM pg_notify(sqldlm_channel(), 'sqldlm:group:' || p_group);
    END IF;
END
$$;
-- +goose StatementEnd

-- sqldlm_group_bump adds one to the group's stored generation (its row is
-- locked by sqldlm_group_lock), notifies the group's watchers (at commit)
-- and returns the generation with the epoch term.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_group_bump(p_group text, p_epoch bigint) RETURNS bigint
LANGUAGE sql
AS $$
    SELECT pg_notify(sqldlm_channel(), 'sqldlm:group:' || p_group);
    UPDATE sqldlm_groups SET generation = generation + 1 WHERE name = p_group
    RETURNING p_epoch * 4294967296 + generation;
$$;
-- +goose StatementEnd

-- sqldlm_group_join: o_status 'joined' (o_incarnation), 'taken' (the live
-- member of that id: o_owner, o_lease, o_request, o_incarnation,
-- o_expires_us), 'lease_lost' or 'withdrawn'; o_generation after the join.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_group_join(p_group text, p_member text, p_lease bigint, p_request bigint,
    p_meta text, p_weight double precision,
    OUT o_status text, OUT o_incarnation bigint, OUT o_generation bigint,
    OUT o_owner text, OUT o_lease bigint, OUT o_request bigint, OUT o_expires_us bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    g record;
    m record;
BEGIN
    SELECT * INTO g FROM sqldlm_group_lock(p_group);
    o_generation := g.o_epoch * 4294967296 + g.o_generation;
    IF EXISTS (SELECT 1 FROM sqldlm_member_withdrawn w WHERE w.lease_id = p_lease AND w.request_id = p_request) THEN
        o_status := 'withdrawn';
        RETURN;
    END IF;
    SELECT mm.lease_id, mm.request_id, mm.incarnation, l.owner,
           (extract(epoch FROM l.expires_at - g.o_now) * 1000000)::bigint AS expires_us
      INTO m
      FROM sqldlm_members mm JOIN sqldlm_leases l ON l.id = mm.lease_id
     WHERE mm.group_name = p_group AND mm.member_id = p_member;
    IF FOUND THEN
        -- Swept: the member is live (or its expiry is frozen).
        IF m.lease_id = p_lease AND m.request_id = p_request THEN
            o_status := 'joined';
            o_incarnation := m.incarnation;
        ELSE
            o_status := 'taken';
            o_owner := m.owner;
            o_lease := m.lease_id;
            o_request := m.request_id;
            o_incarnation := m.incarnation;
            o_expires_us := m.expires_us;
        END IF;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM sqldlm_leases l
                    WHERE l.id = p_lease AND l.broken_at IS NULL AND l.expires_at > g.o_now
                      AND l.epoch = g.o_epoch) THEN
        o_status := 'lease_lost';
        RETURN;
    END IF;
    o_generation := sqldlm_group_bump(p_group, g.o_epoch);
    INSERT INTO sqldlm_members (group_name, member_id, lease_id, request_id, incarnation, meta, weight, joined_at)
    VALUES (p_group, p_member, p_lease, p_request, o_generation, p_meta, p_weight, g.o_now);
    INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
    SELECT g.o_now, 'join', 'sqldlm:group:' || p_group || ':' || p_member, l.owner, p_lease, o_generation, 'X', p_meta, ''
      FROM sqldlm_leases l JOIN sqldlm_settings s ON s.id = 1 AND s.audit
     WHERE l.id = p_lease;
    o_status := 'joined';
    o_incarnation := o_generation;
END
$$;
-- +goose StatementEnd

-- sqldlm_group_leave deletes the membership of request (p_lease, p_request)
-- and records the request as withdrawn; o_left reports a deleted member.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_group_leave(p_group text, p_member text, p_lease bigint, p_request bigint,
    OUT o_left boolean, OUT o_generation bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    g record;
BEGIN
    SELECT * INTO g FROM sqldlm_group_lock(p_group);
    o_generation := g.o_epoch * 4294967296 + g.o_generation;
    INSERT INTO sqldlm_member_withdrawn (lease_id, request_id, group_name, withdrawn_at)
    VALUES (p_lease, p_request, p_group, g.o_now) ON CONFLICT DO NOTHING;
    WITH d AS (
        DELETE FROM sqldlm_members m
         WHERE m.group_name = p_group AND m.member_id = p_member AND m.lease_id = p_lease AND m.request_id = p_request
        RETURNING m.*
    ), a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT g.o_now, 'leave', 'sqldlm:group:' || d.group_name || ':' || d.member_id, coalesce(l.owner, ''),
               d.lease_id, d.incarnation, 'X', d.meta, ''
          FROM d JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          LEFT JOIN sqldlm_leases l ON l.id = d.lease_id
    )
    SELECT count(*) > 0 INTO o_left FROM d;
    IF o_left THEN
        o_generation := sqldlm_group_bump(p_group, g.o_epoch);
    END IF;
END
$$;
-- +goose StatementEnd

-- sqldlm_group_set_meta replaces the meta of a live membership.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_group_set_meta(p_group text, p_member text, p_lease bigint, p_request bigint, p_meta text,
    OUT o_ok boolean, OUT o_generation bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    g record;
BEGIN
    SELECT * INTO g FROM sqldlm_group_lock(p_group);
    o_generation := g.o_epoch * 4294967296 + g.o_generation;
    WITH u AS (
        UPDATE sqldlm_members m SET meta = p_meta
         WHERE m.group_name = p_group AND m.member_id = p_member AND m.lease_id = p_lease AND m.request_id = p_request
           AND EXISTS (SELECT 1 FROM sqldlm_leases l
                        WHERE l.id = p_lease AND l.broken_at IS NULL AND l.expires_at > g.o_now)
        RETURNING m.*
    ), a AS (
        INSERT INTO sqldlm_audit (at, event, name, owner, lease_id, token, mode, payload, detail)
        SELECT g.o_now, 'update', 'sqldlm:group:' || u.group_name || ':' || u.member_id, l.owner,
               u.lease_id, u.incarnation, 'X', u.meta, ''
          FROM u JOIN sqldlm_settings s ON s.id = 1 AND s.audit
          JOIN sqldlm_leases l ON l.id = u.lease_id
    )
    SELECT count(*) > 0 INTO o_ok FROM u;
    IF o_ok THEN
        o_generation := sqldlm_group_bump(p_group, g.o_epoch);
    END IF;
END
$$;
-- +goose StatementEnd

-- sqldlm_group_sweep sweeps the group (see sqldlm_group_lock) and returns
-- its generation: readers call it when they find a member whose lease has
-- expired but is not broken yet.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_group_sweep(p_group text) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    g record;
BEGIN
    SELECT * INTO g FROM sqldlm_group_lock(p_group);
    RETURN g.o_epoch * 4294967296 + g.o_generation;
END
$$;
-- +goose StatementEnd

-- sqldlm_group_members returns the group's generation and its members in
-- one statement (one snapshot): one row per member whose lease is there
-- and not broken (expired tells whether its expiry has passed by the
-- server's clock: the caller then sweeps, and reads again), or a single
-- row with a NULL member_id when there is none. A plain read never counts
-- an expiry by the clock alone: a renewal that ran before the expiry may
-- not have committed yet, and a member counted gone must stay gone.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_group_members(p_group text)
RETURNS TABLE (generation bigint, member_id text, owner text, lease_id bigint, request_id bigint,
               incarnation bigint, meta text, weight double precision, joined_at timestamptz,
               expires_us bigint, expired boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    v_epoch bigint;
BEGIN
    SELECT e.o_epoch INTO v_epoch FROM sqldlm_current_epoch() e;
    RETURN QUERY
    WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now),
    m AS (
        SELECT mm.*, l.owner AS lease_owner, l.expires_at,
               (l.id IS NOT NULL AND l.broken_at IS NULL) AS live
          FROM sqldlm_members mm
          LEFT JOIN sqldlm_leases l ON l.id = mm.lease_id
         WHERE mm.group_name = p_group
    ),
    g AS (
        SELECT v_epoch * 4294967296
               + coalesce((SELECT gg.generation FROM sqldlm_groups gg WHERE gg.name = p_group), 0)
               + (SELECT count(*) FROM m WHERE NOT m.live) AS generation
    )
    SELECT g.generation, m.member_id, m.lease_owner, m.lease_id, m.request_id, m.incarnation, m.meta,
           m.weight, m.joined_at, (extract(epoch FROM m.expires_at - c.now) * 1000000)::bigint,
           m.expires_at <= c.now
      FROM g CROSS JOIN c LEFT JOIN m ON m.live
     ORDER BY m.member_id COLLATE "C";
END
$$;
-- +goose StatementEnd

-- sqldlm_group_generation is sqldlm_group_members' generation alone, with
-- the number of members whose lease has expired unswept.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_group_generation(p_group text, OUT o_generation bigint, OUT o_expired bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    v_epoch bigint;
BEGIN
    SELECT e.o_epoch INTO v_epoch FROM sqldlm_current_epoch() e;
    SELECT v_epoch * 4294967296
           + coalesce((SELECT gg.generation FROM sqldlm_groups gg WHERE gg.name = p_group), 0)
           + (SELECT count(*) FROM sqldlm_members mm LEFT JOIN sqldlm_leases l ON l.id = mm.lease_id
               WHERE mm.group_name = p_group AND (l.id IS NULL OR l.broken_at IS NOT NULL)),
           (SELECT count(*) FROM sqldlm_members mm JOIN sqldlm_leases l ON l.id = mm.lease_id
             WHERE mm.group_name = p_group AND l.broken_at IS NULL AND l.expires_at <= clock_timestamp())
      INTO o_generation, o_expired;
END
$$;
-- +goose StatementEnd

-- sqldlm_members_view: the live members of every group, for operators and
-- for joins with business tables.
CREATE VIEW sqldlm_members_view AS
WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
SELECT m.group_name, m.member_id, l.owner, m.lease_id, m.incarnation, m.meta, m.weight, m.joined_at,
       round(extract(epoch FROM l.expires_at - c.now), 3) AS expires_in_seconds,
       coalesce(l.broken_at IS NULL AND l.expires_at > c.now, false) AS live
  FROM sqldlm_members m CROSS JOIN c
  LEFT JOIN sqldlm_leases l ON l.id = m.lease_id;

-- +goose Down
DROP VIEW sqldlm_members_view;
DROP FUNCTION sqldlm_group_generation(text);
DROP FUNCTION sqldlm_group_members(text);
DROP FUNCTION sqldlm_group_sweep(text);
DROP FUNCTION sqldlm_group_set_meta(text, text, bigint, bigint, text);
DROP FUNCTION sqldlm_group_leave(text, text, bigint, bigint);
DROP FUNCTION sqldlm_group_join(text, text, bigint, bigint, text, double precision);
DROP FUNCTION sqldlm_group_bump(text, bigint);
DROP FUNCTION sqldlm_group_lock(text);
DROP TABLE sqldlm_member_withdrawn;
DROP TABLE sqldlm_members;
DROP TABLE sqldlm_groups;
