"""The one Dagster entry point: `dagster dev -m dagster_project.definitions` loads `defs`."""

import dagster as dg

from dagster_project.assets import (
    post_minute_reconciliation,
    post_minute_rollups,
    subject_rollup_reconciliation,
    subject_rollups,
)
from dagster_project.ledger import repair_changed_hours, repair_changed_hours_schedule
from dagster_project.resources import resources
from dagster_project.schedules import reconcile_hourly, reconcile_job


def rollups() -> dg.Definitions:
    """The rollups domain: rebuild from the archive, reconcile with the stream, hourly; repair the
    hours in the ledger of changed hours every 10 minutes."""
    return dg.Definitions(
        assets=[post_minute_rollups, post_minute_reconciliation, subject_rollup_reconciliation, subject_rollups],
        jobs=[reconcile_job, repair_changed_hours],
        schedules=[reconcile_hourly, repair_changed_hours_schedule],
    )


# Only `defs` may live at module scope: the CLI refuses a module with two Definitions.
defs = dg.Definitions.merge(rollups(), dg.Definitions(resources=resources()))
