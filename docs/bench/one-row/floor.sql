INSERT INTO floor_locks VALUES ('c' || :client_id, :client_id);
DELETE FROM floor_locks WHERE name = 'c' || :client_id;
