-- The subject rollups in the dashboard's companion database (see 0020 for why materialized views
-- over empty Null tables): the figures dashboards poll, how far their refresh has read, and which
-- posts belong to which subject. Nothing per viewer.
CREATE TABLE IF NOT EXISTS ${dashboard_database}.subject_rollup_source AS subject_rollup ENGINE = Null
;
CREATE MATERIALIZED VIEW IF NOT EXISTS ${dashboard_database}.subject_rollup TO subject_rollup
AS SELECT * FROM ${dashboard_database}.subject_rollup_source
;
CREATE TABLE IF NOT EXISTS ${dashboard_database}.subject_posts_source AS subject_posts ENGINE = Null
;
CREATE MATERIALIZED VIEW IF NOT EXISTS ${dashboard_database}.subject_posts TO subject_posts
AS SELECT * FROM ${dashboard_database}.subject_posts_source
;
CREATE TABLE IF NOT EXISTS ${dashboard_database}.subject_refresh_state_source AS subject_refresh_state ENGINE = Null
;
CREATE MATERIALIZED VIEW IF NOT EXISTS ${dashboard_database}.subject_refresh_state TO subject_refresh_state
AS SELECT * FROM ${dashboard_database}.subject_refresh_state_source
