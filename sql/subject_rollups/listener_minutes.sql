-- A Space's presence events in [from, to), one row per listener and minute (minutes since the
-- epoch), in that order: what pipelines.rollups.listeners.present needs to say who was listening
-- in each minute (its joins and heartbeats, the last of them; its leaves, the first and the last).
SELECT listener_id, intDiv(event_time_ms, 60000) AS minute,
       countIf(action != 'leave') AS alive, maxIf(event_time_ms, action != 'leave') AS last_alive,
       countIf(action = 'leave') AS leaves, minIf(event_time_ms, action = 'leave') AS first_leave,
       maxIf(event_time_ms, action = 'leave') AS last_leave
FROM space_presence FINAL
WHERE space_id = %(space_id)s
  AND event_time >= %(from)s
  AND event_time < %(to)s
GROUP BY listener_id, minute
ORDER BY listener_id, minute
