-- Which UTC hours in [from, to) have hour rows (were rebuilt from the archive).
SELECT DISTINCT hour_start FROM post_hour WHERE hour_start >= %(from)s AND hour_start < %(to)s
