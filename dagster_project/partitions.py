"""Partitions of the rollups: one per UTC hour, the unit a backfill rebuilds and swaps in."""

import dagster as dg

# The first hour of the reference night; a deployment sets its own start.
FIRST_HOUR = "2024-08-12-23:00"

hourly = dg.HourlyPartitionsDefinition(start_date=FIRST_HOUR, timezone="UTC")
