-- Hour rows (post_hour, written by the hourly rebuild) of the posts in the external table
-- `conversation_posts`, for whole UTC hours in [from, to).
SELECT post_id, hour_start, views, impressions, unique_viewers_sketch
FROM post_hour FINAL
WHERE post_id IN (SELECT post_id FROM conversation_posts)
  AND hour_start >= %(from)s
  AND hour_start < %(to)s
