-- The stream's post_minute rows of one UTC hour, as readers see them (FINAL), in the order and
-- chunks of hour_minutes.sql so that a reconciliation can walk both side by side.
SELECT post_id, window_start, views, impressions, unique_viewers_sketch
FROM post_minute FINAL
WHERE window_start >= %(from)s AND window_start < %(to)s AND modulo(post_id, %(chunks)s) = %(chunk)s
ORDER BY post_id, window_start
