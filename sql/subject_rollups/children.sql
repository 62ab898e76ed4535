-- Posts replying to, quoting or linking any of %(post_ids)s (%(post_id_array)s: the same ids as
-- an array). A reply is created after what it answers: only posts created since %(created_from)s.
SELECT post_id, created_at
FROM posts FINAL
WHERE created_at >= %(created_from)s
  AND (reply_to IN %(post_ids)s OR quote_of IN %(post_ids)s OR hasAny(links, %(post_id_array)s))
