-- dead_letters: records the job rejected, with the reason and where they came from, byte for
-- byte. Keyed by origin, so loading the same dead letter twice keeps one row.
CREATE TABLE IF NOT EXISTS dead_letters
(
    source_topic String,
    source_partition UInt32,
    source_offset UInt64,
    reason String,
    payload String,
    loaded_at DateTime
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY (source_topic, source_partition, source_offset)
