-- post_hour: per post and UTC hour, exact counts and the hour's unique-viewer sketch, written
-- when an hour is rebuilt from the archive (the hourly backfill). Ranges covering whole hours
-- read these rows instead of sixty minute rows each.
CREATE TABLE IF NOT EXISTS post_hour
(
    post_id UInt64,
    hour_start DateTime,
    views UInt64,
    impressions UInt64,
    unique_viewers_sketch String,
    unique_viewers Float64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(hour_start) * 100 + toHour(hour_start)
ORDER BY (post_id, hour_start)
