-- This server's replicas of these tables of this database: whether each can change now (not read-only:
-- it has its ZooKeeper session) and whether it leads its shard's replicas of the table (18.16 sends a
-- DROP PARTITION made on another replica to the leader, as user `default`).
SELECT table, is_readonly OR is_session_expired AS read_only, is_leader
FROM system.replicas
WHERE database = currentDatabase() AND table IN %(tables)s
ORDER BY table
