-- Raw ids of erased viewers with rows loaded since %(since)s: a replay of the source topics, a late
-- event, an event after the erasure. Pseudonyms are computed with the key read by a scalar
-- subquery (never in this text); erased_viewers holds pseudonyms only.
SELECT DISTINCT viewer_id FROM (
    SELECT viewer_id FROM events_raw WHERE loaded_at >= %(since)s
    UNION ALL
    SELECT listener_id AS viewer_id FROM space_presence WHERE loaded_at >= %(since)s
    UNION ALL
    SELECT toUInt64OrZero(extract(payload, '"(?:viewer_id|listener_id)"\\s*:\\s*"?([0-9]+)')) AS viewer_id
    FROM dead_letters WHERE loaded_at >= %(since)s
)
WHERE viewer_id != 0
  AND reinterpretAsUInt64(substring(SHA256(concat((SELECT min(key) FROM pseudonym_key),
                                                  toString(viewer_id))), 1, 8))
      IN (SELECT viewer_key FROM erased_viewers)
