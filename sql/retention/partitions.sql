-- The partitions of one of this database's tables (active parts only), with their newest row time
-- as the partition key has it: events_raw and space_presence by UTC hour (2024081223), dead_letters
-- by day (20240812).
SELECT DISTINCT partition FROM system.parts
WHERE database = currentDatabase() AND table = %(table)s AND active
ORDER BY partition
