-- Every valid view and impression into the archive of record; `late`: the stream had already
-- closed its window (loaded_at takes the insert's time, its default).
CREATE MATERIALIZED VIEW IF NOT EXISTS events_valid_loader TO events_raw AS
SELECT event_type, event_id, toDateTime(intDiv(event_time_ms, 1000)) AS event_time, event_time_ms,
       post_id, author_id, viewer_id, surface, client, action, late
FROM events_valid_queue
