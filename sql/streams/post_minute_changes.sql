-- What the subject rollups' refresh reads to find the minutes to recompute (migration 0010):
-- written here as well, because ClickHouse 18.16 does not run the materialized views of a table
-- that another materialized view writes into (post_minute_changes never sees these rows).
CREATE MATERIALIZED VIEW IF NOT EXISTS post_minute_queue_changes TO rollup_changes AS
SELECT 'post_minute' AS source, post_id AS key, toDateTime(substring(window_start, 1, 19), 'UTC') AS window_start,
       now() AS changed_at
FROM post_minute_queue
