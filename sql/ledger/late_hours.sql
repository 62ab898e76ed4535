-- The hours of the late rows (archived after the stream closed their window) loaded since %(since)s.
-- `late` is almost always 0, so PREWHERE reads loaded_at and event_time only where it is not.
SELECT toStartOfHour(event_time) AS hour_start, count() AS late_rows
FROM events_raw
PREWHERE late = 1
WHERE loaded_at >= %(since)s
GROUP BY hour_start
ORDER BY hour_start
