-- Impressions (interactions) of one post by action (like, reply, repost, ...) in [from, to).
SELECT action, sum(impressions) AS impressions
FROM post_surface_minute FINAL
WHERE post_id = %(post_id)s AND action != '' AND window_start >= %(from)s AND window_start < %(to)s
GROUP BY action
ORDER BY impressions DESC
