-- The one-row grant prototype of issue 18 (BENCHMARKS.md, "PostgreSQL schema v10").
-- Run on a database migrated by sqldlm (it adds columns to sqldlm_locks:
-- never on a database in use).
INSERT INTO sqldlm_leases (id, owner, ttl_us, created_at, renewed_at, expires_at)
SELECT g, 'bench-' || g, 3600000000, now(), now(), now() + interval '1 day' FROM generate_series(1, 200) g
ON CONFLICT DO NOTHING;
INSERT INTO sqldlm_locks (name, token, updated_at) SELECT 'c' || g, 0, now() FROM generate_series(0, 199) g ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS floor_locks (name text COLLATE "C" PRIMARY KEY, owner bigint NOT NULL);
ALTER TABLE sqldlm_locks ADD COLUMN IF NOT EXISTS x_lease bigint, ADD COLUMN IF NOT EXISTS x_request bigint,
  ADD COLUMN IF NOT EXISTS x_token bigint, ADD COLUMN IF NOT EXISTS x_since timestamptz, ADD COLUMN IF NOT EXISTS x_payload text;

-- The one-row grant, as a PL/pgSQL function (variant A).
CREATE OR REPLACE FUNCTION proto_acquire(p_name text, p_lease bigint, p_request bigint, p_payload text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v_token bigint;
BEGIN
  WITH l AS (SELECT l.id FROM sqldlm_leases l JOIN sqldlm_epoch e ON e.id = 1
              WHERE l.id = p_lease AND l.epoch = e.epoch AND l.broken_at IS NULL AND l.expires_at > clock_timestamp()
                AND e.freeze_until <= clock_timestamp()
                AND e.timeline = ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::integer
                FOR KEY SHARE OF l)
  UPDATE sqldlm_locks n SET x_lease = p_lease, x_request = p_request, x_token = nextval('sqldlm_holders_token_seq'),
         x_since = clock_timestamp(), x_payload = p_payload
    FROM l, (SELECT xmin AS v FROM sqldlm_locks WHERE name = p_name) s
   WHERE n.name = p_name AND n.x_lease IS NULL AND n.xmin = s.v
     AND NOT EXISTS (SELECT 1 FROM sqldlm_holders h WHERE h.name = p_name)
     AND NOT EXISTS (SELECT 1 FROM sqldlm_waiters w WHERE w.name = p_name)
     AND NOT EXISTS (SELECT 1 FROM sqldlm_withdrawn w WHERE w.lease_id = p_lease AND w.request_id = p_request)
     AND NOT EXISTS (SELECT 1 FROM sqldlm_settings t WHERE t.id = 1 AND t.audit)
  RETURNING n.x_token INTO v_token;
  RETURN v_token;
END $$;

CREATE OR REPLACE FUNCTION proto_release(p_name text, p_lease bigint, p_token bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  UPDATE sqldlm_locks SET x_lease = NULL, x_request = NULL, x_token = NULL, x_since = NULL, x_payload = NULL, token = p_token
   WHERE name = p_name AND x_token = p_token AND x_lease = p_lease;
  IF NOT FOUND THEN
    RETURN false; -- the general path would run here
  END IF;
  IF EXISTS (SELECT 1 FROM sqldlm_waiters WHERE name = p_name) THEN
    PERFORM sqldlm_wake(p_name);
  END IF;
  RETURN true;
END $$;

-- Wrappers with sqldlm_acquire's and sqldlm_release_next's arguments, for
-- loop.sh: the one-row prototype, and the two-commit floor's statements.
CREATE OR REPLACE FUNCTION pa_inline(p_name text, p_lease bigint, p_request bigint, p_mode text, p_enqueue boolean,
    p_upgrade bigint, p_payload text, p_delay_us bigint, OUT o_token bigint) LANGUAGE plpgsql AS $$
BEGIN o_token := proto_acquire(p_name, p_lease, p_request, p_payload); END $$;
CREATE OR REPLACE FUNCTION pa_floor(p_name text, p_lease bigint, p_request bigint, p_mode text, p_enqueue boolean,
    p_upgrade bigint, p_payload text, p_delay_us bigint, OUT o_token bigint) LANGUAGE plpgsql AS $$
BEGIN INSERT INTO floor_locks VALUES (p_name, p_lease); o_token := 1; END $$;
CREATE OR REPLACE FUNCTION pr_floor(p_name text, p_lease bigint, p_token bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN DELETE FROM floor_locks WHERE name = p_name; RETURN true; END $$;
