-- A subject's rollup rows of one grain in [from, to), every column (as subject_rollup lists them).
SELECT subject_id, grain, window_start, subject_views, subject_impressions, posts_new, posts_total,
       views_of_posts_about, impressions_of_posts_about, combined_views, impressions, post_rows,
       unique_viewers_sketch, unique_viewers, listeners, peak_minute, unique_listeners_sketch, version
FROM subject_rollup FINAL
WHERE subject_id = %(subject_id)s AND grain = %(grain)s AND window_start >= %(from)s AND window_start < %(to)s
ORDER BY window_start
