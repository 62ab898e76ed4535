-- The UTC hours holding views or impressions of these viewers, and how many rows.
SELECT toStartOfHour(event_time) AS hour_start, count() AS rows
FROM events_raw
WHERE viewer_id IN %(viewer_ids)s
GROUP BY hour_start
