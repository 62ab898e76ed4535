-- A subject's rollup rows of one grain in [from, to), every column: in the order of the registry
-- (pipelines/store/tables.py, which the code reads them by; its test holds the table to that order).
SELECT *
FROM subject_rollup FINAL
WHERE subject_id = %(subject_id)s AND grain = %(grain)s AND window_start >= %(from)s AND window_start < %(to)s
ORDER BY window_start
