-- When the archive was last scanned for late rows (1970-01-01 when never).
SELECT max(scanned_at) FROM ledger_scans
