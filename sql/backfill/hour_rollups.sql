-- The stream's post_minute rows of one UTC hour, as readers see them (FINAL), in the order and
-- chunks of hour_minutes.sql so that a reconciliation can walk both side by side. Every column, in
-- the order of the registry (pipelines/store/tables.py), which the code reads them by.
SELECT *
FROM post_minute FINAL
WHERE window_start >= %(from)s AND window_start < %(to)s AND modulo(post_id, %(chunks)s) = %(chunk)s
ORDER BY post_id, window_start
