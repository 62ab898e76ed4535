-- How far each subject's rollups reach: the newest minute with views of its conversation, and
-- when the rollups last read what the loader wrote (server clock; now() for the lag).
SELECT s.subject_id, s.refreshed_at, s.changes_read_to, m.newest_minute, now() AS server_now
FROM (SELECT subject_id, argMax(refreshed_at, version) AS refreshed_at,
             argMax(changes_read_to, version) AS changes_read_to
      FROM subject_refresh_state GROUP BY subject_id) AS s
LEFT JOIN (SELECT subject_id, max(window_start) AS newest_minute
           FROM subject_rollup WHERE grain = 'minute' AND post_rows > 0 GROUP BY subject_id) AS m
USING subject_id
