-- The one materialized view over a Kafka table: it writes each block the table reads into the
-- output's table, every column named (18.16 fills no default for a column a view leaves out).
-- {view}, {table}, {queue} and {select} come from pipelines/store/tables.py (the column registry
-- and each output's load expressions), rendered by pipelines/stream/streams.py.
CREATE MATERIALIZED VIEW IF NOT EXISTS {view} TO {table} AS
SELECT {select}
FROM {queue}
