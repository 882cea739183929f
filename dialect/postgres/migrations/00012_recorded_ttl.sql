-- sqldlm schema version 12 for PostgreSQL: the freeze after a promotion
-- lasts the longest TTL the schema has recorded, not only the longest TTL
-- of the leases the new primary still has.
--
-- The epoch change (version 8) froze grants for the longest ttl_us among
-- the leases it found. Those are the leases the new primary received; a
-- lease created on the old primary after the standby last received its WAL
-- is not among them, and neither is a lease deleted since. With one TTL for
-- every client the other leases cover it, but a client whose TTL is longer
-- than every lease the new primary knows (a service with a long TTL that
-- restarted just before the failover, or one whose lease is the only one
-- with that TTL and was lost) could still trust a lock granted by the old
-- primary after the freeze ended and another client was granted the name.
--
-- sqldlm_epoch gets max_ttl_us: the longest TTL any lease of this schema
-- has been created with. An AFTER INSERT trigger on sqldlm_leases raises it
-- (an UPDATE of the epoch row by its key that changes and locks it only
-- when the new TTL is longer, so after the first lease of each TTL it
-- writes nothing); a trigger, not the client's INSERT, so that leases
-- created by every client version are recorded. The migration starts it at
-- the longest TTL among the leases there are. sqldlm_epoch_change freezes
-- grants for the greater of max_ttl_us and the leases' longest TTL.
--
-- What this covers: every TTL that some lease used before the standby last
-- received the old primary's WAL. What it does not: a TTL longer than any
-- used before, first used in the moments before a promotion of an
-- asynchronous standby that did not receive it. An operator who is about to
-- lengthen a TTL can record it first (UPDATE sqldlm_epoch SET max_ttl_us =
-- greatest(max_ttl_us, <microseconds>)) and let it replicate. The record
-- never shrinks by itself: after shortening every client's TTL, an operator
-- may set it lower (UPDATE sqldlm_epoch SET max_ttl_us = 0: the leases that
-- are live still count, and the next lease of each TTL records it again).
--
-- Privileges: the trigger runs as the inserting role, which needs UPDATE on
-- sqldlm_epoch; version 8 gave sqldlm_epoch the grants sqldlm_leases has,
-- and the README's runtime grants cover every table.
--
-- Down drops the trigger, its function and the column, and restores version
-- 11's sqldlm_epoch_change exactly.

-- +goose Up

ALTER TABLE sqldlm_epoch ADD COLUMN max_ttl_us bigint NOT NULL DEFAULT 0;
UPDATE sqldlm_epoch SET max_ttl_us = (SELECT coalesce(max(ttl_us), 0) FROM sqldlm_leases) WHERE id = 1;

-- sqldlm_record_ttl raises sqldlm_epoch.max_ttl_us to a new lease's TTL.
-- +goose StatementBegin
CREATE FUNCTION sqldlm_record_ttl() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sqldlm_epoch SET max_ttl_us = NEW.ttl_us WHERE id = 1 AND max_ttl_us < NEW.ttl_us;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER sqldlm_record_ttl AFTER INSERT ON sqldlm_leases
    FOR EACH ROW EXECUTE FUNCTION sqldlm_record_ttl();

-- sqldlm_epoch_change: version 8's, with the freeze of the greater of the
-- recorded and the live leases' longest TTL.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_epoch_change(p_epoch_table regclass, OUT o_epoch bigint, OUT o_freeze_until timestamptz)
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
                               + greatest(max_ttl_us, (SELECT coalesce(max(ttl_us), 0) FROM %1$I.sqldlm_leases))
                                 * interval ''1 microsecond''
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

-- +goose Down

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION sqldlm_epoch_change(p_epoch_table regclass, OUT o_epoch bigint, OUT o_freeze_until timestamptz)
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

DROP TRIGGER sqldlm_record_ttl ON sqldlm_leases;
DROP FUNCTION sqldlm_record_ttl();
ALTER TABLE sqldlm_epoch DROP COLUMN max_ttl_us;
