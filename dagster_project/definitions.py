"""The one Dagster entry point: `dagster dev -m dagster_project.definitions` loads `defs`."""

import dagster as dg

from dagster_project.assets import (
    post_minute_reconciliation,
    post_minute_rollups,
    subject_rollup_reconciliation,
    subject_rollups,
)
from dagster_project.erasure import erase_viewers, sweep_erased_viewers, sweep_erased_viewers_schedule
from dagster_project.ledger import repair_changed_hours, repair_changed_hours_schedule
from dagster_project.resources import resources
from dagster_project.retention import drop_expired_raw_partitions, drop_expired_raw_partitions_schedule
from dagster_project.schedules import reconcile_hourly, reconcile_job


def rollups() -> dg.Definitions:
    """The rollups domain: rebuild from the archive, reconcile with the stream, hourly; repair the
    hours in the ledger of changed hours every 10 minutes."""
    return dg.Definitions(
        assets=[post_minute_rollups, post_minute_reconciliation, subject_rollup_reconciliation, subject_rollups],
        jobs=[reconcile_job, repair_changed_hours],
        schedules=[reconcile_hourly, repair_changed_hours_schedule],
    )


def privacy() -> dg.Definitions:
    """Viewer privacy: erasure of a batch of viewers on demand, the sweep of erased viewers' returning
    rows every 10 minutes, the raw tables' retention daily."""
    return dg.Definitions(jobs=[erase_viewers, sweep_erased_viewers, drop_expired_raw_partitions],
                          schedules=[sweep_erased_viewers_schedule, drop_expired_raw_partitions_schedule])


# Only `defs` may live at module scope: the CLI refuses a module with two Definitions.
defs = dg.Definitions.merge(rollups(), privacy(), dg.Definitions(resources=resources()))
