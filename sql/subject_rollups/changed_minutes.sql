-- Minutes whose post_minute rows of the subject's conversation (its root and subject_posts)
-- were written since `since` (rollup_changes, filled on every insert into post_minute).
SELECT DISTINCT window_start
FROM rollup_changes
WHERE source = 'post_minute' AND changed_at >= %(since)s
  AND (key = %(root_post_id)s OR key IN (
      SELECT post_id FROM subject_posts
      WHERE subject_id = %(subject_id)s
        AND post_id IN (SELECT key FROM rollup_changes WHERE source = 'post_minute' AND changed_at >= %(since)s)))
