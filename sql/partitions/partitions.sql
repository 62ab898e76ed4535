-- The partitions of one of this database's tables on this server (active parts only), as its
-- partition key has them: events_raw and space_presence by UTC hour (2024081223), dead_letters and
-- rollup_changes by day (20240812); on a cluster, the shard's `_local` table.
SELECT DISTINCT partition FROM system.parts
WHERE database = currentDatabase() AND table = %(table)s AND active
ORDER BY partition
