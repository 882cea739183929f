-- sqldlm schema version 3 for SQLite: the audit log and its setting.
--
-- sqldlm_settings has exactly one row. While audit is on, every operation
-- that grants, upgrades, downgrades or deletes a hold writes one row per
-- hold into sqldlm_audit, in its own transaction. The reaper deletes audit
-- rows older than audit_retention_us whether or not audit is on.
--
-- SQLite needs no record of acquires made in the caller's transaction (the
-- sqldlm_pending table of the server dialects): such a transaction holds the
-- database's write lock until it ends, and its hold tells whether it
-- committed.

-- +goose Up
CREATE TABLE sqldlm_settings (
    id                 INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    audit              INTEGER NOT NULL DEFAULT 0 CHECK (audit IN (0, 1)),
    audit_retention_us INTEGER NOT NULL DEFAULT 604800000000 CHECK (audit_retention_us >= 1000000)
) STRICT;
INSERT INTO sqldlm_settings (id) VALUES (1);

CREATE TABLE sqldlm_audit (
    id       INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,                        -- microseconds since the Unix epoch
    event    TEXT    NOT NULL,                        -- grant, upgrade, downgrade, release, takeover, expire, break
    name     TEXT    NOT NULL,
    owner    TEXT    NOT NULL,                        -- '' when the lease row was already gone
    lease_id INTEGER NOT NULL,
    token    INTEGER NOT NULL,
    mode     TEXT    NOT NULL CHECK (mode IN ('S', 'X')),
    payload  TEXT    NOT NULL DEFAULT '',
    detail   TEXT    NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX sqldlm_audit_name ON sqldlm_audit (name, id);
CREATE INDEX sqldlm_audit_at ON sqldlm_audit (at);

-- +goose Down
DROP TABLE sqldlm_audit;
DROP TABLE sqldlm_settings;
