-- Subject rollups: a tracked subject's figures kept per minute, hour and day, so that its
-- headline for any range reads O(windows in the range) rows and never the posts table.
-- pipelines/rollups/subject_rollups.py owns them (refresh as data arrives, rebuild per hour).
--
-- subject_posts: which posts are about which tracked subject (config/subjects.toml), stored as
-- posts arrive, not recomputed per query. The root itself is not listed (its views are the
-- subject's own). A post only ever joins a subject: attribution follows replies, quotes and
-- links, which never change once posted.
CREATE TABLE IF NOT EXISTS subject_posts
(
    subject_id String,
    post_id UInt64,
    created_at DateTime,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (subject_id, post_id)
;
-- subject_rollup: one row per subject, grain ('minute', 'hour', 'day'; UTC windows) and window.
-- Exact counts; the union sketches of the conversation's viewers (root + posts about it) and of
-- the Space's listeners as DataSketches HLL compact bytes (merged in Python, never summed).
-- listeners: concurrent listeners of the subject's Space in the minute; for an hour or a day the
-- peak of its minutes, reached first at peak_minute. posts_total: posts about the subject
-- created before the window's end.
-- post_rows: the conversation's post_minute rows in the window (0: only listeners or new posts).
-- A window written again (refresh, hourly rebuild) carries a higher version: read with FINAL.
CREATE TABLE IF NOT EXISTS subject_rollup
(
    subject_id String,
    grain String,
    window_start DateTime,
    subject_views UInt64,
    subject_impressions UInt64,
    posts_new UInt64,
    posts_total UInt64,
    views_of_posts_about UInt64,
    impressions_of_posts_about UInt64,
    combined_views UInt64,
    impressions UInt64,
    post_rows UInt64,
    unique_viewers_sketch String,
    unique_viewers Float64,
    listeners UInt64,
    peak_minute DateTime,
    unique_listeners_sketch String,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (subject_id, grain, window_start)
;
-- rollup_changes: what the loader wrote, and when (server clock), filled by the materialized
-- views below on every insert into post_minute, posts and space_presence. The subject refresh
-- reads what changed since it last ran; the hourly rebuild covers what bypasses these views
-- (REPLACE PARTITION of a backfill). key: post_id (post_minute, posts) or space_id.
CREATE TABLE IF NOT EXISTS rollup_changes
(
    source String,
    key UInt64,
    window_start DateTime,
    changed_at DateTime
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(changed_at)
ORDER BY (changed_at, source, key)
;
CREATE MATERIALIZED VIEW IF NOT EXISTS post_minute_changes TO rollup_changes AS
SELECT 'post_minute' AS source, post_id AS key, window_start, now() AS changed_at
FROM post_minute
;
CREATE MATERIALIZED VIEW IF NOT EXISTS posts_changes TO rollup_changes AS
SELECT 'posts' AS source, post_id AS key, toStartOfMinute(created_at) AS window_start, now() AS changed_at
FROM posts
;
CREATE MATERIALIZED VIEW IF NOT EXISTS space_presence_changes TO rollup_changes AS
SELECT 'space_presence' AS source, space_id AS key, toStartOfMinute(event_time) AS window_start,
       now() AS changed_at
FROM space_presence
GROUP BY space_id, toStartOfMinute(event_time)
;
-- subject_refresh_state: how far each subject's rollups have read rollup_changes. A subject
-- without a row (new in config/subjects.toml) is built from scratch on the next refresh.
CREATE TABLE IF NOT EXISTS subject_refresh_state
(
    subject_id String,
    changes_read_to DateTime,
    refreshed_at DateTime,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY subject_id
