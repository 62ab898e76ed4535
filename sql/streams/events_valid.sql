-- Every valid view and impression into the archive of record; `late`: the stream had already
-- closed its window; `loaded_at`: the time of the insert (18.16 fills no default for a column a
-- view's SELECT leaves out: it refuses the block).
CREATE MATERIALIZED VIEW IF NOT EXISTS events_valid_loader TO events_raw AS
SELECT event_type, event_id, toDateTime(intDiv(event_time_ms, 1000)) AS event_time, event_time_ms,
       post_id, author_id, viewer_id, surface, client, action, late, now() AS loaded_at
FROM events_valid_queue
