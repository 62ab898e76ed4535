-- Hours with a change noted after the last repair that covered them (never repaired: covered is
-- the DateTime default, 1970-01-01), oldest first.
SELECT hour_start
FROM (SELECT hour_start, max(noted_at) AS noted FROM changed_hours GROUP BY hour_start) AS changes
ANY LEFT JOIN (SELECT hour_start, max(covered_until) AS covered FROM hour_repairs GROUP BY hour_start) AS repairs
USING hour_start
WHERE noted > covered
ORDER BY hour_start
