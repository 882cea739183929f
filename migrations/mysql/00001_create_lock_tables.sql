-- sqldlm schema version 1 for MySQL 8 and MariaDB 10.6+.
--
-- The tables are created in the current database. Names and owners are
-- VARBINARY so that they compare byte by byte: with MariaDB's PAD SPACE
-- collations 'x' = 'x ', and with _ci collations 'a' = 'A', which would merge
-- distinct locks. Times are DATETIME(6) in UTC, written only by the
-- procedures, which read the clock with SYSDATE(6) under time_zone '+00:00'
-- (NOW() is the statement's start and follows SET timestamp; SYSDATE is not).
--
-- Fencing tokens come from the AUTO_INCREMENT of sqldlm_holders: every grant
-- (and every upgrade) inserts a holder row and so draws a new value. InnoDB
-- persists the counter across restarts (MySQL 8, MariaDB 10.2.4+), so a
-- name's tokens strictly increase even after its rows are deleted.
--
-- Procedure bodies contain semicolons: with the mysql command-line client,
-- wrap each CREATE PROCEDURE in DELIMITER statements.

-- +goose Up
CREATE TABLE sqldlm_leases (
    id         BIGINT         NOT NULL PRIMARY KEY,   -- random, chosen by the client
    owner      VARBINARY(255) NOT NULL,
    ttl_us     BIGINT         NOT NULL,               -- renewal extends expires_at by this
    created_at DATETIME(6)    NOT NULL,
    renewed_at DATETIME(6)    NOT NULL,
    expires_at DATETIME(6)    NOT NULL,
    broken_at  DATETIME(6)    NULL,                  -- set when a takeover or an operator declared the lease dead
    KEY sqldlm_leases_expires_at (expires_at),
    CONSTRAINT sqldlm_leases_owner CHECK (LENGTH(owner) BETWEEN 1 AND 255),
    CONSTRAINT sqldlm_leases_ttl CHECK (ttl_us > 0)
) ENGINE=InnoDB;

-- One row per name that is held, awaited or was recently used: the row every
-- grant of the name locks, so grants of one name serialize on it.
CREATE TABLE sqldlm_locks (
    name       VARBINARY(255) NOT NULL PRIMARY KEY,
    token      BIGINT         NOT NULL DEFAULT 0,     -- highest token granted for the name
    updated_at DATETIME(6)    NOT NULL,               -- last grant; idle rows are collected after a while
    KEY sqldlm_locks_updated_at (updated_at),
    CONSTRAINT sqldlm_locks_name CHECK (LENGTH(name) BETWEEN 1 AND 255)
) ENGINE=InnoDB;

CREATE TABLE sqldlm_holders (
    token       BIGINT         NOT NULL AUTO_INCREMENT PRIMARY KEY, -- the fencing token
    name        VARBINARY(255) NOT NULL,
    lease_id    BIGINT         NOT NULL,
    request_id  BIGINT         NOT NULL,              -- the client's id of the acquire, for idempotent retries
    mode        CHAR(1)        CHARACTER SET ascii NOT NULL,
    acquired_at DATETIME(6)    NOT NULL,
    KEY sqldlm_holders_name (name),
    KEY sqldlm_holders_lease (lease_id, request_id),
    CONSTRAINT sqldlm_holders_mode CHECK (mode IN ('S', 'X'))
) ENGINE=InnoDB;

CREATE TABLE sqldlm_waiters (
    id            BIGINT         NOT NULL AUTO_INCREMENT PRIMARY KEY, -- arrival order
    name          VARBINARY(255) NOT NULL,
    lease_id      BIGINT         NOT NULL,
    request_id    BIGINT         NOT NULL,
    mode          CHAR(1)        CHARACTER SET ascii NOT NULL,
    upgrade_token BIGINT         NULL,                -- the shared hold this waiter upgrades, if any
    since         DATETIME(6)    NOT NULL,
    KEY sqldlm_waiters_name (name, id),
    UNIQUE KEY sqldlm_waiters_lease (lease_id, request_id),
    CONSTRAINT sqldlm_waiters_mode CHECK (mode IN ('S', 'X'))
) ENGINE=InnoDB;

-- sqldlm_now returns the server's clock as microseconds since the Unix epoch.
-- +goose StatementBegin
CREATE PROCEDURE sqldlm_now()
BEGIN
    DECLARE saved_tz VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        SET time_zone = saved_tz;
        RESIGNAL;
    END;
    SET time_zone = '+00:00';
    SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', SYSDATE(6)) AS now_us;
    SET time_zone = saved_tz;
END
-- +goose StatementEnd

-- +goose Down
DROP PROCEDURE sqldlm_now;
DROP TABLE sqldlm_waiters;
DROP TABLE sqldlm_holders;
DROP TABLE sqldlm_locks;
DROP TABLE sqldlm_leases;
