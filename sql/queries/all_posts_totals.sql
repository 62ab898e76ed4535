-- Views and impressions of every post in [from, to), summed over the minute rows.
SELECT count() AS posts, sum(v) AS views, sum(i) AS impressions
FROM
(
    SELECT post_id, sum(views) AS v, sum(impressions) AS i
    FROM post_minute FINAL
    WHERE window_start >= %(from)s AND window_start < %(to)s
    GROUP BY post_id
)
