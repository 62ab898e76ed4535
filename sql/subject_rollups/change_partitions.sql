-- The day partitions of the change log (rollup_changes is partitioned by toYYYYMMDD(changed_at)).
SELECT DISTINCT partition
FROM system.parts
WHERE database = currentDatabase() AND table = 'rollup_changes' AND active
