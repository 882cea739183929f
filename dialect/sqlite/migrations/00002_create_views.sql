-- sqldlm schema version 2 for SQLite: read-only views for operators, with
-- ages computed from SQLite's clock. Times are shown as ISO 8601 UTC text.
-- sqldlm itself never reads them.

-- +goose Up
CREATE VIEW sqldlm_leases_view AS
SELECT l.id AS lease_id,
       l.owner,
       strftime('%Y-%m-%dT%H:%M:%fZ', l.created_at / 1000000.0, 'unixepoch') AS created_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', l.renewed_at / 1000000.0, 'unixepoch') AS renewed_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', l.expires_at / 1000000.0, 'unixepoch') AS expires_at,
       round((l.expires_at - unixepoch('subsec') * 1000000) / 1000000.0, 3) AS expires_in_seconds,
       l.broken_at IS NOT NULL AS broken,
       (l.broken_at IS NULL AND l.expires_at > unixepoch('subsec') * 1000000) AS live,
       (SELECT COUNT(*) FROM sqldlm_holders h WHERE h.lease_id = l.id) AS holds,
       (SELECT COUNT(*) FROM sqldlm_waiters w WHERE w.lease_id = l.id) AS waits
FROM sqldlm_leases l;

CREATE VIEW sqldlm_holders_view AS
SELECT h.name,
       l.owner,
       h.lease_id,
       CASE h.mode WHEN 'X' THEN 'exclusive' ELSE 'shared' END AS mode,
       h.token,
       strftime('%Y-%m-%dT%H:%M:%fZ', h.acquired_at / 1000000.0, 'unixepoch') AS acquired_at,
       round((unixepoch('subsec') * 1000000 - h.acquired_at) / 1000000.0, 3) AS held_seconds,
       round((l.expires_at - unixepoch('subsec') * 1000000) / 1000000.0, 3) AS expires_in_seconds,
       COALESCE(l.broken_at IS NULL AND l.expires_at > unixepoch('subsec') * 1000000, 0) AS live,
       h.payload
FROM sqldlm_holders h LEFT JOIN sqldlm_leases l ON l.id = h.lease_id;

CREATE VIEW sqldlm_waiters_view AS
SELECT w.name,
       l.owner,
       w.lease_id,
       CASE w.mode WHEN 'X' THEN 'exclusive' ELSE 'shared' END AS mode,
       w.upgrade_token IS NOT NULL AS upgrade,
       strftime('%Y-%m-%dT%H:%M:%fZ', w.since / 1000000.0, 'unixepoch') AS since,
       round((unixepoch('subsec') * 1000000 - w.since) / 1000000.0, 3) AS waited_seconds,
       ROW_NUMBER() OVER (PARTITION BY w.name ORDER BY w.upgrade_token IS NULL, w.id) AS position
FROM sqldlm_waiters w JOIN sqldlm_leases l ON l.id = w.lease_id
WHERE l.broken_at IS NULL AND l.expires_at > unixepoch('subsec') * 1000000;

-- +goose Down
DROP VIEW sqldlm_waiters_view;
DROP VIEW sqldlm_holders_view;
DROP VIEW sqldlm_leases_view;
