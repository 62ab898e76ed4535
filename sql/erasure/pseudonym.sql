-- A viewer's pseudonym, the expression every statement uses (pipelines/store/pseudonyms.py):
-- SHA-256 of the key and the decimal id, first 8 bytes as a little-endian UInt64.
SELECT reinterpretAsUInt64(substring(SHA256(concat((SELECT min(key) FROM pseudonym_key),
                                                   toString(%(viewer_id)s))), 1, 8))
