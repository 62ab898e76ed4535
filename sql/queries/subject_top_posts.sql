-- A subject's most viewed posts (its root and the posts about it, from subject_posts) in [from, to).
SELECT post_id, sum(views) AS views, sum(impressions) AS impressions
FROM post_minute FINAL
WHERE window_start >= %(from)s AND window_start < %(to)s
  AND (post_id = %(root_post_id)s
       OR post_id IN (SELECT post_id FROM subject_posts WHERE subject_id = %(subject_id)s))
GROUP BY post_id
ORDER BY views DESC, post_id
LIMIT %(limit)s
