-- Presence events of these listeners.
SELECT count() FROM space_presence WHERE listener_id IN %(viewer_ids)s
