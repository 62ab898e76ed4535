-- The listener minutes the subject rollups' refresh recomputes (see post_minute_changes.sql).
CREATE MATERIALIZED VIEW IF NOT EXISTS presence_valid_queue_changes TO rollup_changes AS
SELECT 'space_presence' AS source, space_id AS key, toStartOfMinute(toDateTime(intDiv(event_time_ms, 1000))) AS window_start,
       now() AS changed_at
FROM presence_valid_queue
GROUP BY space_id, toStartOfMinute(toDateTime(intDiv(event_time_ms, 1000)))
