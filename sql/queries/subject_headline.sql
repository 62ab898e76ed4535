-- A subject's rollup rows covering [from, to) with as few rows as possible: whole UTC days from
-- the day rows, whole hours from the hour rows, the edges from the minute rows
-- (pipelines.serve.figures_from_rollups computes the bounds: from <= hour_from <= day_from <= day_to
-- <= hour_to <= to).
-- Counts are sums of these rows; unique viewers and listeners are unions of their sketches.
-- Every column, in the order of the registry (pipelines/store/tables.py), which the code reads them by.
SELECT *
FROM subject_rollup FINAL
WHERE subject_id = %(subject_id)s
  AND window_start >= %(from)s AND window_start < %(to)s
  AND ((grain = 'day' AND window_start >= %(day_from)s AND window_start < %(day_to)s)
    OR (grain = 'hour' AND ((window_start >= %(hour_from)s AND window_start < %(day_from)s)
                            OR (window_start >= %(day_to)s AND window_start < %(hour_to)s)))
    OR (grain = 'minute' AND (window_start < %(hour_from)s OR window_start >= %(hour_to)s)))
ORDER BY window_start
