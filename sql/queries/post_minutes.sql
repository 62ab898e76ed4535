-- The minute rows of one post in [from, to): exact counts, in the order of the registry's
-- POST_MINUTE_COUNTS (pipelines/store/tables.py, which the code reads them by), and each minute's
-- viewer sketch.
-- FINAL: a re-emitted window replaces its earlier row (ReplacingMergeTree by version).
SELECT window_start, views, impressions, unique_viewers_sketch
FROM post_minute FINAL
WHERE post_id = %(post_id)s
  AND window_start >= %(from)s
  AND window_start < %(to)s
ORDER BY window_start
