-- Posts replying to, quoting or linking any of the given posts (post_ids, and post_id_array: the
-- same ids as an array). A reply is created after what it answers: only posts created since then.
SELECT post_id, created_at
FROM posts FINAL
WHERE created_at >= %(created_from)s
  AND (reply_to IN %(post_ids)s OR quote_of IN %(post_ids)s OR hasAny(links, %(post_id_array)s))
