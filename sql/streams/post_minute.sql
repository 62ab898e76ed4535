-- Post-minute rollups: the job writes its window start as UTC text and the sketch as hex.
CREATE MATERIALIZED VIEW IF NOT EXISTS post_minute_loader TO post_minute AS
SELECT post_id, toDateTime(substring(window_start, 1, 19), 'UTC') AS window_start, views, impressions,
       unhex(unique_viewers_sketch) AS unique_viewers_sketch, unique_viewers, version
FROM post_minute_queue
