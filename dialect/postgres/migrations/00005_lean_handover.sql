-- sqldlm schema version 5 for PostgreSQL: a leaner handover, whose
-- notification carries the grant.
--
-- Version 4's sqldlm_release_next granted the head of the queue by running
-- the waiter's whole sqldlm_acquire (evaluating holds, waiters and dead
-- leases twice), and the woken waiter then ran sqldlm_acquire once more to
-- learn its token. Version 5 grants with the statements a grant to a known
-- head needs, and sends the token in the notification, so the woken waiter
-- needs no statement at all:
--
--   'g <lease id> <request id> <token> <name>'
--
-- The leading 'g' keeps these apart from sqldlm_wake's
-- '<lease id> <request id> <name>' (a lease id is a number). The
-- notification is delivered only once the releasing transaction has
-- committed, so the hold it names exists. A waiter that misses it still
-- finds the hold with its next sqldlm_acquire (a repeated request), as in
-- version 4.
--
-- When nobody waits, sqldlm_release_next runs sqldlm_release's statements
-- inline instead of calling it.
--
-- Down restores version 4's sqldlm_release_next exactly.

-- +goose Up

-- sqldlm_release_next is sqldlm_release (out of the caller's transaction:
-- Release, not ReleaseTx) that also hands the name over: when someone
-- waits, it grants the live waiters at the head of the queue in the same
-- transaction and notifies each with its token. The head is the first
-- waiter of a live lease in the order grants serve them (a pending upgrade
-- first, then by arrival); after a shared head, the live shared waiters up
-- to the first live exclusive one go with it. It hands over only when the
-- head is not an upgrade and no remaining hold of the name conflicts (a
-- dead holder to take over waits for the waiter's own acquire, which
-- applies its lock delay and reports the takeover). Otherwise, or if
-- nothing was granted, it wakes the head as sqldlm_release does.
--
-- A grant here writes what sqldlm_acquire's grant writes for a waiter with
-- nothing to take over: the hold (with the waiter's payload and a token
-- from the sequence), its audit row, the name's token, and the deletion of
-- the waiter row.
--
-- Row locks, in the global order: the name's row FOR UPDATE (before the
-- hold it deletes; holds of a name are inserted only under that lock, so
-- every statement below sees them all), then per waiter its lease FOR KEY
-- SHARE (it cannot be deleted under the grant; its liveness is checked
-- again after the lock, by the clock then) and its waiter row FOR UPDATE:
-- a waiter withdrawn meanwhile (sqldlm_abandon deletes the row first) is
-- skipped, and one withdrawn after waits for this commit and then deletes
-- the granted hold with its row.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release_next(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd

-- +goose Down
-- Version 4's sqldlm_release_next, as migration 4 created it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_release_next(p_name text, p_lease bigint, p_token bigint) RETURNS boolean
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
