-- How many archived events (duplicate deliveries included) one UTC hour holds: sizes its chunks.
SELECT count() FROM %(archive)s
WHERE event_time >= %(from)s AND event_time < %(to)s
