\set r random(1, 4000000000000)
UPDATE sqldlm_locks n SET x_lease = :client_id + 1, x_request = :r, x_token = nextval('sqldlm_holders_token_seq'), x_since = clock_timestamp(), x_payload = '' FROM sqldlm_leases l WHERE l.id = :client_id + 1 AND l.expires_at > clock_timestamp() AND n.name = 'c' || :client_id AND n.x_lease IS NULL RETURNING n.x_token AS t \gset
UPDATE sqldlm_locks SET x_lease = NULL, x_request = NULL, x_token = NULL, x_since = NULL, x_payload = NULL, token = :t WHERE name = 'c' || :client_id AND x_token = :t AND x_lease = :client_id + 1;
