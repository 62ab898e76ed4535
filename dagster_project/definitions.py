"""The one Dagster entry point: `dagster dev -m dagster_project.definitions` loads `defs`.

Backfill assets, partitions, resources and schedules arrive with the backfill work; until then
the definitions load empty so that tooling and tests can already rely on the entry point.
"""

import dagster as dg

defs = dg.Definitions()
