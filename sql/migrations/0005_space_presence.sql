-- space_presence: every validated presence event of a live Space (join, leave, heartbeat).
-- Concurrent listeners per minute are the sessions open in that minute, a session running
-- from a join to its leave, or to its last heartbeat plus the heartbeat timeout.
-- Duplicates collapse on event_id (ReplacingMergeTree; read with FINAL).
CREATE TABLE IF NOT EXISTS space_presence
(
    space_id UInt64,
    listener_id UInt64,
    event_time DateTime,
    event_time_ms UInt64,
    action String,          -- join, leave, heartbeat
    event_id String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(event_time) * 100 + toHour(event_time)
ORDER BY (space_id, listener_id, event_time_ms, event_id)
