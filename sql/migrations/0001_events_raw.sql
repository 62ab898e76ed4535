-- events_raw: every validated view and impression, the archive of record.
-- Backfills rebuild rollups from it and analysts can count from it exactly.
-- Duplicate deliveries share their sorting key (the event_id is in it), so ReplacingMergeTree
-- collapses them on merge; exact reads use FINAL (or count(DISTINCT event_id)).
-- One partition per UTC hour (2024081223 = 23:00 on 12 Aug): the unit a backfill replaces.
CREATE TABLE IF NOT EXISTS events_raw
(
    event_type String,      -- 'view' or 'impression'
    event_id String,        -- unique per event; a retry repeats it
    event_time DateTime,    -- UTC, whole seconds
    event_time_ms UInt64,   -- milliseconds since the epoch, as sent
    post_id UInt64,
    author_id UInt64,
    viewer_id UInt64,       -- logged-in viewer (logged-out traffic is rejected upstream)
    surface String,         -- home, search, profile, ...
    client String,
    action String           -- impressions only: like, reply, ...; empty for views
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(event_time) * 100 + toHour(event_time)
ORDER BY (event_type, post_id, event_time, event_id)
