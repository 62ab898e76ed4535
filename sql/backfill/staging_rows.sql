-- Rows written into a staging table (for the rebuild's report).
SELECT count() FROM %(staging)s
