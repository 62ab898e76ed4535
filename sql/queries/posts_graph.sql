-- Every post's links to other posts and its tags: what attribution to a subject walks.
SELECT post_id, reply_to, quote_of, links, tags, created_at
FROM posts FINAL
