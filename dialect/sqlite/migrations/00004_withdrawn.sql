-- sqldlm schema version 4 for SQLite: a withdrawal is final.
--
-- Abandon records each withdrawn request (lease, request) in
-- sqldlm_withdrawn. Acquire, in the same write transaction in which it would
-- grant or queue the request, answers "withdrawn" for a recorded request:
-- a statement of a request that the client gave up, however late it runs,
-- can neither grant nor queue it. SQLite has one writer at a time, so the
-- check and the withdrawal serialize on the database's write lock.
--
-- Records go with their lease (DeleteLease, Reap of dead leases), and Reap
-- deletes those older than dialect.WithdrawnRetention.

-- +goose Up
CREATE TABLE sqldlm_withdrawn (
    lease_id     INTEGER NOT NULL,
    request_id   INTEGER NOT NULL,
    name         TEXT    NOT NULL,                    -- the name the request asked for
    withdrawn_at INTEGER NOT NULL,                    -- microseconds since the Unix epoch
    PRIMARY KEY (lease_id, request_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX sqldlm_withdrawn_at ON sqldlm_withdrawn (withdrawn_at);

-- +goose Down
DROP TABLE sqldlm_withdrawn;
