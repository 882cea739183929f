-- sqldlm schema version 5 for SQLite: group membership (issue 16).
--
-- A member is a row of sqldlm_members that hangs off a lease: it is live
-- exactly while its lease is live by the database's clock, so members add
-- no heartbeat of their own. Each group has a row in sqldlm_groups whose
-- generation counts the group's changes: the generation a read reports is
-- the stored one plus the number of the group's member rows whose lease is
-- not live. Join, Leave and SetMeta run in one write transaction (SQLite
-- has one writer at a time), sweep the group first (mark its members'
-- expired leases broken, delete the member rows of broken or missing
-- leases and add their number to the stored generation), and add one when
-- they change a member. So the generation never goes back and changes with
-- every join, leave, update and expiry. A member's incarnation is the
-- generation right after its join. A leave records its request (lease,
-- request id) in sqldlm_member_withdrawn, and a join of a recorded request
-- joins nothing. See dialect/sqlite/group.go for the statements, which are
-- the contract for clients in other languages.

-- +goose Up
CREATE TABLE sqldlm_groups (
    name       TEXT    NOT NULL PRIMARY KEY CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 255),
    generation INTEGER NOT NULL DEFAULT 0
) STRICT, WITHOUT ROWID;

CREATE TABLE sqldlm_members (
    group_name  TEXT    NOT NULL REFERENCES sqldlm_groups (name),
    member_id   TEXT    NOT NULL CHECK (length(CAST(member_id AS BLOB)) BETWEEN 1 AND 255),
    lease_id    INTEGER NOT NULL,
    request_id  INTEGER NOT NULL,
    incarnation INTEGER NOT NULL,
    meta        TEXT    NOT NULL DEFAULT '',
    weight      REAL    NOT NULL DEFAULT 1 CHECK (weight > 0),
    joined_at   INTEGER NOT NULL,                      -- microseconds since the Unix epoch
    PRIMARY KEY (group_name, member_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX sqldlm_members_lease ON sqldlm_members (lease_id);

CREATE TABLE sqldlm_member_withdrawn (
    lease_id     INTEGER NOT NULL,
    request_id   INTEGER NOT NULL,
    group_name   TEXT    NOT NULL,
    withdrawn_at INTEGER NOT NULL,
    PRIMARY KEY (lease_id, request_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX sqldlm_member_withdrawn_group ON sqldlm_member_withdrawn (group_name);

CREATE VIEW sqldlm_members_view AS
SELECT m.group_name,
       m.member_id,
       l.owner,
       m.lease_id,
       m.incarnation,
       m.meta,
       m.weight,
       strftime('%Y-%m-%dT%H:%M:%fZ', m.joined_at / 1000000.0, 'unixepoch') AS joined_at,
       round((l.expires_at - unixepoch('subsec') * 1000000) / 1000000.0, 3) AS expires_in_seconds,
       COALESCE(l.broken_at IS NULL AND l.expires_at > unixepoch('subsec') * 1000000, 0) AS live
FROM sqldlm_members m LEFT JOIN sqldlm_leases l ON l.id = m.lease_id;

-- +goose Down
DROP VIEW sqldlm_members_view;
DROP TABLE sqldlm_member_withdrawn;
DROP TABLE sqldlm_members;
DROP TABLE sqldlm_groups;
