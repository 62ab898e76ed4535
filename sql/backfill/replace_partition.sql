-- The hour's partition of a rollup table replaced by its staging copy, atomically for readers:
-- they see the old hour or the new one, never a mix. The staging copy holds the whole hour.
ALTER TABLE %(table)s REPLACE PARTITION %(partition)s FROM %(staging)s
