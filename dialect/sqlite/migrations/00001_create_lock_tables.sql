-- sqldlm schema version 1 for SQLite 3.42+.
--
-- Times are INTEGER microseconds since the Unix epoch, written from SQLite's
-- clock (unixepoch('subsec'), millisecond resolution). Text compares byte by
-- byte (BINARY collation), so names differing in case or trailing spaces are
-- distinct.
--
-- Fencing tokens come from the AUTOINCREMENT of sqldlm_holders: every grant
-- (and every upgrade) inserts a holder row and so draws a new value.
-- AUTOINCREMENT never reuses a value, even after rows are deleted, so a
-- name's tokens strictly increase without a per-name counter.

-- +goose Up
CREATE TABLE sqldlm_leases (
    id         INTEGER NOT NULL PRIMARY KEY,          -- random, chosen by the client
    owner      TEXT    NOT NULL CHECK (length(CAST(owner AS BLOB)) BETWEEN 1 AND 255),
    ttl_us     INTEGER NOT NULL CHECK (ttl_us > 0),   -- renewal extends expires_at by this
    created_at INTEGER NOT NULL,
    renewed_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    broken_at  INTEGER                                -- set when a takeover or an operator declared the lease dead
) STRICT;
CREATE INDEX sqldlm_leases_expires_at ON sqldlm_leases (expires_at);

-- One row per name that is held, awaited or was recently used.
CREATE TABLE sqldlm_locks (
    name       TEXT    NOT NULL PRIMARY KEY CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 255),
    token      INTEGER NOT NULL DEFAULT 0,            -- highest token granted for the name
    updated_at INTEGER NOT NULL                       -- last grant; idle rows are collected after a while
) STRICT, WITHOUT ROWID;
CREATE INDEX sqldlm_locks_updated_at ON sqldlm_locks (updated_at);

CREATE TABLE sqldlm_holders (
    token       INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, -- the fencing token
    name        TEXT    NOT NULL,
    lease_id    INTEGER NOT NULL,
    request_id  INTEGER NOT NULL,                     -- the client's id of the acquire, for idempotent retries
    mode        TEXT    NOT NULL CHECK (mode IN ('S', 'X')),
    acquired_at INTEGER NOT NULL,
    payload     TEXT    NOT NULL DEFAULT '' CHECK (length(CAST(payload AS BLOB)) <= 1024) -- what the holder is doing
) STRICT;
CREATE INDEX sqldlm_holders_name ON sqldlm_holders (name);
CREATE INDEX sqldlm_holders_lease ON sqldlm_holders (lease_id, request_id);

CREATE TABLE sqldlm_waiters (
    id            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, -- arrival order
    name          TEXT    NOT NULL,
    lease_id      INTEGER NOT NULL,
    request_id    INTEGER NOT NULL,
    mode          TEXT    NOT NULL CHECK (mode IN ('S', 'X')),
    upgrade_token INTEGER,                            -- the shared hold this waiter upgrades, if any
    since         INTEGER NOT NULL
) STRICT;
CREATE INDEX sqldlm_waiters_name ON sqldlm_waiters (name, id);
CREATE UNIQUE INDEX sqldlm_waiters_lease ON sqldlm_waiters (lease_id, request_id);

-- +goose Down
DROP TABLE sqldlm_waiters;
DROP TABLE sqldlm_holders;
DROP TABLE sqldlm_locks;
DROP TABLE sqldlm_leases;
