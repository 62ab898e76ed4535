-- An erasure: the viewers' views and impressions leave the archive (an 18.16 mutation: it rewrites
-- the parts holding them in the background; pipelines/repair/erasure.py waits for it). The table is
-- filled in by erasure._sql: events_raw, or on a cluster events_raw_local on one replica of each shard.
ALTER TABLE %(events_raw)s DELETE WHERE viewer_id IN %(viewer_ids)s
