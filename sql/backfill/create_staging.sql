-- A staging copy of a rollup table for one hour ({staging} = <table>_staging_<hour>,
-- one per hour so that backfills of different hours can run at once), filled with the whole
-- hour, then swapped in with REPLACE PARTITION and dropped.
CREATE TABLE IF NOT EXISTS {staging} AS {table}
