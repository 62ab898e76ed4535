-- Dead letters whose payload names one of these viewers as its viewer_id or listener_id field
-- (a number or a string of digits; payloads are what clients sent, valid JSON or not).
SELECT count() FROM dead_letters
WHERE toUInt64OrZero(extract(payload, '"(?:viewer_id|listener_id)"\\s*:\\s*"?([0-9]+)')) IN %(viewer_ids)s
