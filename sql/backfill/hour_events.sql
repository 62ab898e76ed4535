-- The deduplicated views and impressions of one UTC hour, in (post, minute) order, for a rebuild.
SELECT post_id, toStartOfMinute(event_time) AS window_start, event_type, viewer_id
FROM events_raw FINAL
WHERE event_time >= %(from)s AND event_time < %(to)s
ORDER BY post_id, window_start
