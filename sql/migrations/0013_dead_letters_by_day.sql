-- dead_letters partitioned by the day it was loaded, so that retention drops whole days
-- (ALTER TABLE ... DROP PARTITION, pipelines/repair/retention.py) instead of rewriting the table.
-- 18.16 cannot change a table's PARTITION BY: a new table takes the rows, then the names swap.
-- Dead letters inserted between the copy and the swap would stay in the old table, dropped
-- below: run this migration (make up, viewcount migrate) while the loader is stopped.
CREATE TABLE IF NOT EXISTS dead_letters_by_day
(
    source_topic String,
    source_partition UInt32,
    source_offset UInt64,
    reason String,
    payload String,
    loaded_at DateTime
)
ENGINE = ReplacingMergeTree(loaded_at)
PARTITION BY toYYYYMMDD(loaded_at)
ORDER BY (source_topic, source_partition, source_offset)
;
INSERT INTO dead_letters_by_day SELECT source_topic, source_partition, source_offset, reason, payload, loaded_at
FROM dead_letters
;
RENAME TABLE dead_letters TO dead_letters_unpartitioned, dead_letters_by_day TO dead_letters
;
DROP TABLE dead_letters_unpartitioned
