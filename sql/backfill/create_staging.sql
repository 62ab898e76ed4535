-- A staging copy of post_minute's structure, filled with a whole hour, then swapped in.
CREATE TABLE IF NOT EXISTS post_minute_staging AS post_minute
