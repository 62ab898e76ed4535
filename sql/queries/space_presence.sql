-- Presence events of one Space in [from - heartbeat timeout, to), in session order.
SELECT listener_id, event_time_ms, action
FROM space_presence FINAL
WHERE space_id = %(space_id)s
  AND event_time >= %(from)s
  AND event_time < %(to)s
ORDER BY listener_id, event_time_ms
