-- The post_minute rows of the subject's conversation in the given minutes (all of them in
-- [from, to), so whole partitions are skipped): the root's flagged, sketches for the union.
SELECT window_start, post_id = %(root_post_id)s AS is_root, views, impressions, unique_viewers_sketch
FROM post_minute FINAL
WHERE window_start >= %(from)s AND window_start < %(to)s AND window_start IN %(minutes)s
  AND (post_id = %(root_post_id)s
       OR post_id IN (SELECT post_id FROM subject_posts WHERE subject_id = %(subject_id)s))
