-- Views and impressions of one post by surface (home, search, profile, ...) in [from, to).
-- Run as the analyst:  clickhouse-client --user analyst --password "$VIEWCOUNT_CLICKHOUSE_ANALYST_PASSWORD" --database viewcount
--   --param_... is not in 18.16: substitute the values, or use the query API.
SELECT surface, sum(views) AS views, sum(impressions) AS impressions
FROM post_surface_minute FINAL
WHERE post_id = %(post_id)s AND window_start >= %(from)s AND window_start < %(to)s
GROUP BY surface
ORDER BY views DESC
