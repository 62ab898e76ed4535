-- Per post, minute, surface and action.
CREATE MATERIALIZED VIEW IF NOT EXISTS post_surface_minute_loader TO post_surface_minute AS
SELECT post_id, toDateTime(substring(window_start, 1, 19), 'UTC') AS window_start, surface, action, views,
       impressions, version
FROM post_surface_minute_queue
