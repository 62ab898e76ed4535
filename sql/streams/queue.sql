-- A Kafka consumer inside ClickHouse for one output of the job: it reads the topic's committed
-- transactions (isolation_level in the server's <kafka> config) and hands each block to the
-- materialized view that writes it into its table, then commits the group's offsets. A crash
-- between the write and the commit repeats the block; the target tables are ReplacingMergeTree
-- keyed by the row's identity, so a repeat changes nothing once merged (reads use FINAL).
-- The records are in the output's wire format (JSONEachRow, or RowBinary for the archive: one row
-- a record, no delimiter between them).
-- {queue}, {columns} and {format} come from pipelines/store/tables.py (an allowlist); values are parameters.
CREATE TABLE IF NOT EXISTS {queue} ({columns})
ENGINE = Kafka(%(broker)s, %(topic)s, %(group)s, '{format}')
