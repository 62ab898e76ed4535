-- Posts written since `since`, with what they point at: the candidates for attribution.
SELECT post_id, reply_to, quote_of, links, tags, created_at
FROM posts FINAL
WHERE post_id IN (SELECT key FROM rollup_changes WHERE source = 'posts' AND changed_at >= %(since)s)
