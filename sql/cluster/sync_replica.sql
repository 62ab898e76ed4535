-- Wait until this replica of the table holds every part its shard's replication log names (it
-- fetches what it missed from the other replicas). The table (a registry name, `_local` on a
-- cluster) is filled in by pipelines/store/shards.py.
SYSTEM SYNC REPLICA %(table)s
