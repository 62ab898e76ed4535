-- The server's clock: rollup_changes.changed_at is stamped with it.
SELECT now()
