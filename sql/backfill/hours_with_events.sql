-- The UTC hours the archive has events in, oldest first.
SELECT DISTINCT toStartOfHour(event_time) AS hour_start FROM events_raw ORDER BY hour_start
