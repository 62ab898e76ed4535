-- On a cluster: a shard's staging copy of a replicated rollup table (table = <rollup>_local), on the
-- replica the shard's rebuild runs on, with its columns and its engine unreplicated (engine: the
-- table's own engine_full without the ZooKeeper path and replica; filled in by
-- pipelines.repair.backfill). 18.16 takes an unreplicated source for REPLACE PARTITION of a
-- replicated table; the other replica fetches the swapped-in parts from this one.
CREATE TABLE IF NOT EXISTS %(staging)s AS %(table)s ENGINE = %(engine)s
