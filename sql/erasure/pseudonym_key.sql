-- The pseudonym key (created once by the writer: pipelines/store/pseudonyms.py). When two writers
-- raced to create it, the smallest wins, for everyone.
SELECT min(key) FROM pseudonym_key
