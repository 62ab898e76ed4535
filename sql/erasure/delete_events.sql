-- An erasure: the viewers' views and impressions leave the archive (an 18.16 mutation: it rewrites
-- the parts holding them in the background; pipelines/repair/erasure.py waits for it).
ALTER TABLE events_raw DELETE WHERE viewer_id IN %(viewer_ids)s
