-- When the newest change was noted (1970-01-01 when none).
SELECT max(noted_at) FROM changed_hours
