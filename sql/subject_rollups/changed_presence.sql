-- Minutes of the Space's presence events written since `since`.
SELECT DISTINCT window_start
FROM rollup_changes
WHERE source = 'space_presence' AND key = %(space_id)s AND changed_at >= %(since)s
