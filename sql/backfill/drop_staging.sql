-- A staging table dropped: after its swap, or left over by a crashed run.
DROP TABLE IF EXISTS %(staging)s
