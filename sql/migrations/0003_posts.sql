-- posts: one row per created post and what it points at, for conversation attribution.
-- 0 in reply_to / quote_of means none.
CREATE TABLE IF NOT EXISTS posts
(
    post_id UInt64,
    author_id UInt64,
    created_at DateTime,
    reply_to UInt64,
    quote_of UInt64,
    links Array(UInt64),
    tags Array(String),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(created_at)
ORDER BY post_id
