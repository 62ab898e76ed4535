-- Which of the given posts are already about the subject.
SELECT DISTINCT post_id
FROM subject_posts
WHERE subject_id = %(subject_id)s AND post_id IN %(post_ids)s
