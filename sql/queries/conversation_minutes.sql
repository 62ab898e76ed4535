-- Minute rows of the posts in the external table `conversation_posts` (the subject's root and
-- the posts about it) in [from, to). The caller unions the sketches; counts are sums.
SELECT post_id, window_start, views, impressions, unique_viewers_sketch
FROM post_minute FINAL
WHERE post_id IN (SELECT post_id FROM conversation_posts)
  AND window_start >= %(from)s
  AND window_start < %(to)s
