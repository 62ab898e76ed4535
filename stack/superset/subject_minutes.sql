-- Superset's dataset `subject_minutes` (pipelines/serve/superset_dashboards.py): the subject rollups' minute rows,
-- read by the dashboard user in its companion database. FINAL: a minute written again (refresh,
-- hourly rebuild) replaces the earlier row, so sums over minutes count each minute once.
-- Counts add up over minutes; listeners are concurrent, so a range's figure is their peak (max).
SELECT
    subject_id,
    window_start,
    subject_views,
    posts_new,
    views_of_posts_about,
    combined_views,
    impressions,
    listeners
FROM subject_rollup FINAL
WHERE grain = 'minute'
