-- When the sweep last ran (1970-01-01 when never).
SELECT max(swept_at) FROM erasure_sweeps
