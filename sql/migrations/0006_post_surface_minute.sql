-- post_surface_minute: views and impressions per post, minute, surface and action (views have
-- action ''): where a post was seen (home, search, profile, ...) and how people interacted.
-- Exact counts, deduplicated on event_id like post_minute; versioned the same way (read FINAL).
CREATE TABLE IF NOT EXISTS post_surface_minute
(
    post_id UInt64,
    window_start DateTime,
    surface String,
    action String,
    views UInt64,
    impressions UInt64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(window_start) * 100 + toHour(window_start)
ORDER BY (post_id, window_start, surface, action)
