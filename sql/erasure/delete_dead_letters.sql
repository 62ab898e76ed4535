-- An erasure: the dead letters whose payload names the viewers (the same match as dead_letter_rows.sql).
ALTER TABLE %(dead_letters)s
DELETE WHERE toUInt64OrZero(extract(payload, '"(?:viewer_id|listener_id)"\\s*:\\s*"?([0-9]+)')) IN %(viewer_ids)s
