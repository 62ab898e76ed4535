-- post_surface_minute rows of one hour, counted from the archive inside the server.
-- FINAL collapses duplicate deliveries (same event_id) before counting. The archive: events_raw, or
-- on a cluster the shard's own events_raw_local.
INSERT INTO %(staging)s (post_id, window_start, surface, action, views, impressions, version)
SELECT post_id, toStartOfMinute(event_time) AS window_start, surface, action,
       countIf(event_type = 'view') AS views, countIf(event_type = 'impression') AS impressions,
       %(version)s AS version
FROM %(archive)s FINAL
WHERE event_time >= %(from)s AND event_time < %(to)s
  -- Erased viewers are skipped (sql/migrations/0012): their pseudonym, key from a scalar subquery.
  AND reinterpretAsUInt64(substring(SHA256(concat((SELECT min(key) FROM pseudonym_key),
                                                  toString(viewer_id))), 1, 8))
      NOT IN (SELECT viewer_key FROM erased_viewers)
GROUP BY post_id, window_start, surface, action
