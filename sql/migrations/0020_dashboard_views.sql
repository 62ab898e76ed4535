-- The dashboard's companion database: the rollups under their own names, and nothing per viewer
-- (events_raw, space_presence, dead_letters stay out). The dashboard user may use only this
-- database (allow_databases, the one access control ClickHouse 18.16 has; no per-table grants).
--
-- Why materialized views and not plain views (tried on 18.16, docs/access.md): a VIEW runs its
-- SELECT with the querying user's rights, so a user confined to this database is refused
-- ("Access denied to database ...") through it. Reading a MATERIALIZED VIEW ... TO t reads t
-- itself, so the user reads the rollup, FINAL included, and nothing else. No rows are copied:
-- each view's source is an empty Null table here that nothing writes, so inserts into the
-- rollups trigger nothing, and a backfill's REPLACE PARTITION shows through at once.
-- A column added to a rollup later needs its view dropped and created again in a new migration.
CREATE DATABASE IF NOT EXISTS ${dashboard_database}
;
CREATE TABLE IF NOT EXISTS ${dashboard_database}.post_minute_source AS post_minute ENGINE = Null
;
CREATE MATERIALIZED VIEW IF NOT EXISTS ${dashboard_database}.post_minute TO post_minute
AS SELECT * FROM ${dashboard_database}.post_minute_source
;
CREATE TABLE IF NOT EXISTS ${dashboard_database}.post_hour_source AS post_hour ENGINE = Null
;
CREATE MATERIALIZED VIEW IF NOT EXISTS ${dashboard_database}.post_hour TO post_hour
AS SELECT * FROM ${dashboard_database}.post_hour_source
;
CREATE TABLE IF NOT EXISTS ${dashboard_database}.post_surface_minute_source AS post_surface_minute ENGINE = Null
;
CREATE MATERIALIZED VIEW IF NOT EXISTS ${dashboard_database}.post_surface_minute TO post_surface_minute
AS SELECT * FROM ${dashboard_database}.post_surface_minute_source
;
-- posts: public post metadata (author, replies, quotes, links, tags) for conversation attribution.
CREATE TABLE IF NOT EXISTS ${dashboard_database}.posts_source AS posts ENGINE = Null
;
CREATE MATERIALIZED VIEW IF NOT EXISTS ${dashboard_database}.posts TO posts
AS SELECT * FROM ${dashboard_database}.posts_source
