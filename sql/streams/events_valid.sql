-- Every valid view and impression into the archive of record.
CREATE MATERIALIZED VIEW IF NOT EXISTS events_valid_loader TO events_raw AS
SELECT event_type, event_id, toDateTime(intDiv(event_time_ms, 1000)) AS event_time, event_time_ms,
       post_id, author_id, viewer_id, surface, client, action
FROM events_valid_queue
