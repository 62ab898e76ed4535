-- A staging copy of a rollup table for one hour (staging = <table>_staging_<hour>, one per
-- hour so that backfills of different hours can run at once), filled with the whole hour, then
-- swapped in with REPLACE PARTITION and dropped.
-- Every file here has one placeholder style, the driver's named one. Table names (allowlisted,
-- never user input) are filled in by pipelines.repair.backfill.backfill_sql; values go as driver parameters.
CREATE TABLE IF NOT EXISTS %(staging)s AS %(table)s
