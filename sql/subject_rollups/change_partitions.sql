-- The day partitions of the change log (rollup_changes is partitioned by toYYYYMMDD(changed_at)) on
-- this server; `table` is rollup_changes, or on a cluster the shard's rollup_changes_local.
SELECT DISTINCT partition
FROM system.parts
WHERE database = currentDatabase() AND table = %(table)s AND active
