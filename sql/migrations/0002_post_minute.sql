-- post_minute: per post and 1-minute window (UTC), exact counts and the unique-viewer sketch.
-- A window written again (a re-emit after a restore, a backfill) carries a higher version
-- and replaces the earlier row: read with FINAL (or argMax by version).
-- unique_viewers_sketch: DataSketches HLL (lg_k and type in pipelines/rollups/sketches.py), compact
-- bytes; ranges are unions of these sketches, never sums of unique_viewers.
CREATE TABLE IF NOT EXISTS post_minute
(
    post_id UInt64,
    window_start DateTime,
    views UInt64,
    impressions UInt64,
    unique_viewers_sketch String,
    unique_viewers Float64,  -- this minute's estimate, for quick looks only
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(window_start) * 100 + toHour(window_start)
ORDER BY (post_id, window_start)
