-- The most viewed posts in [from, to) among those in the external table `conversation_posts`
-- (the query API sends a subject's posts; clickhouse-client can send a file with --external).
SELECT post_id, sum(views) AS views, sum(impressions) AS impressions
FROM post_minute FINAL
WHERE post_id IN (SELECT post_id FROM conversation_posts)
  AND window_start >= %(from)s AND window_start < %(to)s
GROUP BY post_id
ORDER BY views DESC
LIMIT %(limit)s
