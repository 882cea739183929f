#!/bin/sh
# loop.sh DB ACQUIRE RELEASE N: server time of N acquire+release pairs on one
# backend, each acquire and each release its own commit, synchronous_commit
# off (no WAL flush waits), so the time is the server's work only. ACQUIRE
# has sqldlm_acquire's arguments and returns o_token; RELEASE has
# sqldlm_release_next's. The lease (id 8) and the name's row ('c7') come
# from setup.sql.
psql -h 127.0.0.1 -U postgres -d "$1" -q <<SQL
CHECKPOINT;
VACUUM ANALYZE sqldlm_locks, sqldlm_holders, sqldlm_leases;
SET synchronous_commit = off;
CREATE OR REPLACE PROCEDURE pbench(n int) LANGUAGE plpgsql AS \$\$
DECLARE t bigint;
BEGIN
  FOR i IN 1..n LOOP
    SELECT o_token INTO t FROM $2('c7', 8, (random() * 1e15)::bigint, 'X', false, 0, '', 0);
    IF t IS NULL THEN RAISE EXCEPTION 'not granted'; END IF;
    COMMIT;
    PERFORM $3('c7', 8, t);
    COMMIT;
  END LOOP;
END \$\$;
CALL pbench(500);
\timing on
CALL pbench($4);
SQL
