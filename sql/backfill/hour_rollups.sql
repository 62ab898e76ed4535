-- The stream's post_minute rows of one UTC hour, as readers see them (FINAL).
SELECT post_id, window_start, views, impressions, unique_viewers_sketch
FROM post_minute FINAL
WHERE window_start >= %(from)s AND window_start < %(to)s
