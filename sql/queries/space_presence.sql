-- Presence events of one Space in [from, to), in session order (pipelines.rollups.listeners):
-- of a leave and a join or heartbeat at the same millisecond, the leave first.
SELECT listener_id, event_time_ms, action = 'leave' AS leave
FROM space_presence FINAL
WHERE space_id = %(space_id)s
  AND event_time >= %(from)s
  AND event_time < %(to)s
ORDER BY listener_id, event_time_ms, leave DESC
