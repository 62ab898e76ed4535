-- Every valid presence event of a live Space (join, leave, heartbeat).
CREATE MATERIALIZED VIEW IF NOT EXISTS presence_valid_loader TO space_presence AS
SELECT space_id, listener_id, toDateTime(intDiv(event_time_ms, 1000)) AS event_time, event_time_ms, action, event_id
FROM presence_valid_queue
