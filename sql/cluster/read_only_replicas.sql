-- Which of these replicated tables of this database this server cannot change now: read-only (no
-- ZooKeeper session, or one that expired: a restarted replica until its old session is gone).
SELECT table FROM system.replicas
WHERE database = currentDatabase() AND table IN %(tables)s AND (is_readonly OR is_session_expired)
ORDER BY table
