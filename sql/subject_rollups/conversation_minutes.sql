-- All minutes with post_minute rows of the subject's conversation (its root and subject_posts).
SELECT DISTINCT window_start
FROM post_minute
WHERE post_id = %(root_post_id)s
   OR post_id IN (SELECT post_id FROM subject_posts WHERE subject_id = %(subject_id)s)
