"""Every hour, the hour that just closed: record how the stream drifted from the archive, then
rebuild it from the archive (late events counted, hour rows written for fast long ranges)."""

import dagster as dg

from dagster_project.assets import (
    post_minute_reconciliation,
    post_minute_rollups,
    subject_rollup_reconciliation,
    subject_rollups,
)

reconcile_job = dg.define_asset_job(
    "reconcile_closed_hour", selection=dg.AssetSelection.assets(post_minute_reconciliation, post_minute_rollups,
                                         subject_rollup_reconciliation, subject_rollups),
)
# :15 past: the hour's last windows closed (watermark 10 s) and were loaded well before.
reconcile_hourly = dg.build_schedule_from_partitioned_job(reconcile_job, minute_of_hour=15)
