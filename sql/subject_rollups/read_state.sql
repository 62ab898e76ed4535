-- How far the subject's rollups have read rollup_changes (no row: never built).
SELECT changes_read_to FROM subject_refresh_state FINAL WHERE subject_id = %(subject_id)s
