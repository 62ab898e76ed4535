-- Posts about the subject by creation minute from `from` on, and (minute 1970-01-01) those before.
SELECT if(created_at < %(from)s, toDateTime(0), toStartOfMinute(created_at)) AS minute, count() AS posts
FROM subject_posts FINAL
WHERE subject_id = %(subject_id)s
GROUP BY minute
