-- Erasure of viewers (pipelines/repair/erasure.py; docs/access.md, "Erasure").
--
-- pseudonym_key: the secret of viewer pseudonyms, one random row the writer inserts once (as data,
-- never in a query's text: pipelines/store/pseudonyms.py). A viewer's pseudonym is the first 8
-- bytes of SHA-256(key || decimal id), read as a little-endian UInt64: without the key it names
-- nobody, and viewer ids are small integers, so the key is what stops a brute force. Queries read
-- it with a scalar subquery (sql/erasure/pseudonym.sql), so the key is in no statement's text.
CREATE TABLE IF NOT EXISTS pseudonym_key
(
    key String,
    created_at DateTime DEFAULT now()
)
ENGINE = MergeTree
ORDER BY key
;
-- erased_viewers: every viewer erased, by pseudonym only (the raw id is kept nowhere). The
-- archive's rebuilds skip their events (sql/backfill/) and the sweep deletes any row of theirs that
-- arrives later (a replay of the source topics, a late event); request_id names the request.
CREATE TABLE IF NOT EXISTS erased_viewers
(
    viewer_key UInt64,
    erased_at DateTime,
    request_id String
)
ENGINE = MergeTree
ORDER BY viewer_key
;
-- erasure_requests: one row per request, appended once it is done, never changed: who asked,
-- when, for how many viewers, which hours were rebuilt and how many rows each table lost.
-- requested_by 'sweep': rows of already erased viewers that arrived after their erasure.
CREATE TABLE IF NOT EXISTS erasure_requests
(
    request_id String,
    requested_by String,
    requested_at DateTime,
    finished_at DateTime,
    viewers UInt32,
    hours Array(DateTime),
    events_raw_rows UInt64,
    space_presence_rows UInt64,
    dead_letters_rows UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(requested_at)
ORDER BY (requested_at, request_id)
;
-- erasure_sweeps: how far the archive has been swept for rows of erased viewers (one row per sweep).
CREATE TABLE IF NOT EXISTS erasure_sweeps
(
    swept_at DateTime
)
ENGINE = MergeTree
ORDER BY swept_at
;
-- space_presence.loaded_at: when the row reached the table, so that the sweep reads only new rows.
ALTER TABLE space_presence ADD COLUMN loaded_at DateTime DEFAULT now()
