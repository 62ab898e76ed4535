-- A table's engine as the server describes it (on a cluster: a shard's replicated table, whose
-- staging copy takes the same engine unreplicated; pipelines/store/shapes.py, unreplicated_engine).
SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = %(table)s
