-- All minutes with presence events of the Space.
SELECT DISTINCT toStartOfMinute(event_time)
FROM space_presence
WHERE space_id = %(space_id)s
