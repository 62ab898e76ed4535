-- The UTC hours whose listener figures these listeners' presence events move: an event's own hour
-- and the hour its session reaches a heartbeat timeout later (pipelines/rollups/listeners.py).
SELECT hour_start, count() AS rows
FROM (
    SELECT arrayJoin(arrayDistinct([toStartOfHour(event_time),
                                    toStartOfHour(event_time + %(heartbeat_timeout_s)s)])) AS hour_start
    FROM space_presence
    WHERE listener_id IN %(viewer_ids)s
)
GROUP BY hour_start
