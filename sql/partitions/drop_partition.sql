-- One partition of a table dropped whole: the parts go at once, nothing is rewritten. The
-- partition is its key value, a number (2024081223): 18.16 refuses a string for an integer key.
ALTER TABLE %(table)s DROP PARTITION %(partition)s
