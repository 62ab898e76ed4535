-- The pseudonym key moves to a database only the writer may use (docs/access.md).
--
-- Viewer ids are small integers: whoever reads the key can hash every id and name the viewer behind
-- any pseudonym (erased_viewers). ClickHouse 18.16 has no per-table grants, only allow_databases, so
-- the key gets a database of its own that no reader's allow_databases lists. The project database
-- keeps a `pseudonym_key` that reads it (a Merge table): every statement that computes a pseudonym
-- still says `(SELECT min(key) FROM pseudonym_key)`, the writer reads through it, and a reader is
-- refused (18.16 checks the underlying database's rights through a Merge table: tried). New keys
-- are written into ${private_database} directly (pipelines/store/pseudonyms.py).
CREATE DATABASE IF NOT EXISTS ${private_database}
;
CREATE TABLE IF NOT EXISTS ${private_database}.pseudonym_key
(
    key String,
    created_at DateTime DEFAULT now()
)
ENGINE = MergeTree
ORDER BY key
;
INSERT INTO ${private_database}.pseudonym_key (key, created_at) SELECT key, created_at FROM pseudonym_key
;
DROP TABLE IF EXISTS pseudonym_key
;
CREATE TABLE pseudonym_key AS ${private_database}.pseudonym_key ENGINE = Merge('${private_database}', '^pseudonym_key$')
