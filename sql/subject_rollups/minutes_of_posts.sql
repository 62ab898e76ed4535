-- The minutes in which any of the given posts has post_minute rows (read by the primary key).
SELECT DISTINCT window_start
FROM post_minute
WHERE post_id IN %(post_ids)s
