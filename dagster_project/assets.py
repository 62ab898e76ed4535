"""Hourly rollups rebuilt from the archive, and the hourly reconciliation with the stream."""

from datetime import UTC

import dagster as dg

from dagster_project.partitions import hourly
from dagster_project.resources import ClickHouseResource
from pipelines.repair import backfill, reconcile


def _hourly_asset(**kwargs):
    """An asset of the hourly partitions. A range of them runs as one run (`dagster asset
    materialize --partition-range a...b`), hour by hour."""
    return dg.asset(partitions_def=hourly, backfill_policy=dg.BackfillPolicy.single_run(), **kwargs)


def _hours(context: dg.AssetExecutionContext):
    window = context.partition_time_window
    return backfill.hours_between(window.start.astimezone(UTC), window.end.astimezone(UTC))


def _reconciled(totals: dict, drifting: list[str], check_name: str, mended_by: str) -> dg.MaterializeResult:
    """A reconciliation's result: its totals and drifting hours, and its check, passed when no hour
    drifts, saying which asset mends the ones that do."""
    metadata = {**totals, "drifting_hours": ", ".join(drifting) or "none"}
    fix = f"materialize {mended_by} for the drifting hours" if drifting else "nothing to do"
    return dg.MaterializeResult(metadata=metadata, check_results=[dg.AssetCheckResult(
        check_name=check_name, passed=not drifting, metadata={**metadata, "fix": fix})])


@_hourly_asset(
    group_name="rollups",
    description="The stream's post_minute rows of a closed hour compared with a rebuild from events_raw.",
    check_specs=[dg.AssetCheckSpec("stream_agrees_with_archive", asset="post_minute_reconciliation",
                                   description="no count differs; every unique estimate within the other's bounds")],
)
def post_minute_reconciliation(context: dg.AssetExecutionContext, clickhouse: ClickHouseResource):
    with clickhouse.client() as client:
        drifts = [reconcile.compare_hour(client, hour) for hour in _hours(context)]
    totals = {
        "missing_windows": sum(d.missing for d in drifts),
        "extra_windows": sum(d.extra for d in drifts),
        "count_differences": sum(d.count_differences for d in drifts),
        "views_difference": sum(d.views_difference for d in drifts),
        "impressions_difference": sum(d.impressions_difference for d in drifts),
        "estimates_outside_bounds": sum(d.estimates_outside for d in drifts),
        "sketches_with_other_bytes": sum(d.sketches_differ for d in drifts),
        "stream_rows": sum(d.stream_rows for d in drifts),
        "archive_rows": sum(d.archive_rows for d in drifts),
    }
    drifting = [f"{d.hour_start:%Y-%m-%d %H:00}" for d in drifts if not d.clean]
    return _reconciled(totals, drifting, "stream_agrees_with_archive", mended_by="post_minute_rollups")


@_hourly_asset(
    group_name="rollups",
    description="Every rollup table of the hour(s) (pipelines.repair.backfill.ROLLUP_BUILDERS: post_minute, post_hour, "
    "post_surface_minute), rebuilt from events_raw and swapped in with REPLACE PARTITION.",
    # After the reconciliation when both run (the hourly schedule): drift is recorded, then mended.
    deps=[post_minute_reconciliation],
)
def post_minute_rollups(context: dg.AssetExecutionContext, clickhouse: ClickHouseResource) -> dg.MaterializeResult:
    hours = _hours(context)
    reports = []
    with clickhouse.client() as client:
        for number, hour in enumerate(hours, start=1):
            report = backfill.rebuild_hour(client, hour, shape=clickhouse.shape())
            reports.append(report)
            context.log.info(
                f"hour {number}/{len(hours)} {hour:%Y-%m-%d %H:00} UTC: {report.rows} rows, "
                f"{report.views} views, {report.impressions} impressions in {report.seconds:.1f} s"
            )
    figures: dict[str, int] = {}
    for report in reports:
        for name, value in report.figures.items():
            figures[name] = figures.get(name, 0) + value
    return dg.MaterializeResult(metadata={
        **figures,  # rows (post_minute), views, impressions, and each other table's rows
        "hours": len(reports),
        "seconds": round(sum(r.seconds for r in reports), 2),
    })


# --- subject rollups (pipelines/repair/subject_repair.py) ---------------------------------------------

@_hourly_asset(
    group_name="subjects",
    description="Each tracked subject's stored minute rows of the hour compared with a recomputation from "
    "post_minute, posts and space_presence (after the hour was rebuilt from the archive).",
    deps=[post_minute_rollups],
    check_specs=[dg.AssetCheckSpec("subject_rollups_agree_with_sources", asset="subject_rollup_reconciliation",
                                   description="attribution complete; no count differs; every unique estimate "
                                   "within the other's bounds")],
)
def subject_rollup_reconciliation(context: dg.AssetExecutionContext, clickhouse: ClickHouseResource):
    from pipelines.repair import subject_repair
    from pipelines.rollups.subjects import conversation_posts, load_subjects

    drifts = []
    with clickhouse.client() as client:
        for subject in load_subjects().values():
            about, _ = conversation_posts(client, subject)
            stored = {pid for (pid,) in client.execute(
                "SELECT post_id FROM subject_posts WHERE subject_id = %(subject_id)s", {"subject_id": subject.id})}
            missing = len(about - stored)
            drifts += [subject_repair.compare_hour(client, subject, hour, missing_posts=missing)
                       for hour in _hours(context)]
    totals = {
        "missing_posts": max((d.missing_posts for d in drifts), default=0),
        "missing_windows": sum(d.missing_windows for d in drifts),
        "extra_windows": sum(d.extra_windows for d in drifts),
        "count_differences": sum(d.count_differences for d in drifts),
        "estimates_outside_bounds": sum(d.estimates_outside_bounds for d in drifts),
        "rows": sum(d.rows for d in drifts),
    }
    drifting = [f"{d.subject_id} {d.hour_start:%Y-%m-%d %H:00}" for d in drifts if not d.clean]
    for drift in drifts:
        for line in drift.details[:20]:
            context.log.info(f"{drift.subject_id} {line}")
    return _reconciled(totals, drifting, "subject_rollups_agree_with_sources", mended_by="subject_rollups")


@_hourly_asset(
    group_name="subjects",
    description="Each tracked subject's minute, hour and day rows of the hour(s), recomputed from post_minute, posts "
    "and space_presence (pipelines.repair.subject_repair.rebuild_hour); posts the stream's attribution missed are "
    "added.",
    deps=[subject_rollup_reconciliation],
)
def subject_rollups(context: dg.AssetExecutionContext, clickhouse: ClickHouseResource) -> dg.MaterializeResult:
    from pipelines.repair import subject_repair
    from pipelines.rollups.subjects import load_subjects

    written = 0
    with clickhouse.client() as client:
        for subject in load_subjects().values():
            for hour in _hours(context):
                rows = subject_repair.rebuild_hour(client, subject, hour)
                written += rows
                context.log.info(f"{subject.id} {hour:%Y-%m-%d %H:00} UTC: {rows} minute rows")
    return dg.MaterializeResult(metadata={"minute_rows": written, "hours": len(_hours(context))})
