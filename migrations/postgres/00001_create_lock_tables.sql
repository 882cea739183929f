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
    acquired_at timestamptz NOT NULL
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

-- +goose Down
DROP TABLE sqldlm_waiters;
DROP TABLE sqldlm_holders;
DROP TABLE sqldlm_locks;
DROP TABLE sqldlm_leases;
