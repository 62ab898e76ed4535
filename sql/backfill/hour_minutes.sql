-- Per post and minute of one UTC hour, from the archive: the deduplicated counts (FINAL collapses
-- duplicate deliveries, same event_id), views and impressions in the order of the registry's
-- POST_MINUTE_COUNTS (pipelines/store/tables.py, which the code reads them by), and the distinct
-- viewer ids of the views, in (post, minute) order. The viewer ids become the minute's HLL sketch
-- in Python (pipelines/rollups/sketches.py), exactly as the stream's loader does.
-- One chunk of posts per query (post_id modulo chunks): a grouped result reaches the client as
-- one block, so the chunk, not the hour, bounds the client's memory. The archive is events_raw, or on a
-- cluster a shard's own events_raw_local (its posts' rows: pipelines/repair/backfill.py).
SELECT post_id, toStartOfMinute(event_time) AS window_start,
       countIf(event_type = 'view') AS views, countIf(event_type = 'impression') AS impressions,
       groupUniqArrayIf(viewer_id, event_type = 'view') AS viewer_ids
FROM %(archive)s FINAL
WHERE event_time >= %(from)s AND event_time < %(to)s
  -- Erased viewers are skipped (sql/migrations/0012): their pseudonym, key from a scalar subquery.
  AND reinterpretAsUInt64(substring(SHA256(concat((SELECT min(key) FROM pseudonym_key),
                                                  toString(viewer_id))), 1, 8))
      NOT IN (SELECT viewer_key FROM erased_viewers) AND modulo(post_id, %(chunks)s) = %(chunk)s
GROUP BY post_id, window_start
ORDER BY post_id, window_start
