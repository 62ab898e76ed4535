-- A subject's series at one grain ('minute' or 'hour') in [from, to): counts, the window's
-- unique-viewer estimate (its own sketch; never add these up across windows) and listeners.
SELECT window_start, subject_views, posts_new, posts_total, views_of_posts_about, combined_views, impressions,
       unique_viewers, listeners
FROM subject_rollup FINAL
WHERE subject_id = %(subject_id)s AND grain = %(grain)s AND window_start >= %(from)s AND window_start < %(to)s
ORDER BY window_start
