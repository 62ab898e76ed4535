-- How many archived events (duplicate deliveries included) one UTC hour holds: sizes its chunks.
SELECT count() FROM events_raw
WHERE event_time >= %(from)s AND event_time < %(to)s
