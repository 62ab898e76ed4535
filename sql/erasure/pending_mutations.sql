-- Mutations of this database's table not yet done (18.16 has no synchronous mutations).
SELECT count() FROM system.mutations
WHERE database = currentDatabase() AND table = %(table)s AND is_done = 0
