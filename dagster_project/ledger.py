"""The ledger's repair (pipelines.repair.ledger): every few minutes, the hours whose sources changed
after the stream closed them (late events, erasures, subjects added) are rebuilt, post and subject
rollups together, and marked repaired. Hours not in the ledger are not touched."""

import dagster as dg

from dagster_project.resources import ClickHouseResource


@dg.op(description="Note the hours of late rows newly in the archive, then rebuild every pending hour of the "
       "ledger (post rollups from events_raw, then each subject's rollups) and record the repair.")
def repair_changed_hours_op(context: dg.OpExecutionContext, clickhouse: ClickHouseResource) -> None:
    from pipelines.repair import ledger

    with clickhouse.client() as client:
        report = ledger.repair(client, shape=clickhouse.shape())
    hours = ", ".join(f"{h:%Y-%m-%d %H:00}" for h in report.hours) or "none"
    context.log.info(f"late rows noted: {sum(report.late_rows.values())}; hours repaired: {hours}")
    context.log_event(dg.AssetObservation(asset_key="changed_hours", metadata={
        "hours_repaired": len(report.hours), "repaired": hours, "late_rows_noted": sum(report.late_rows.values()),
        "views": report.views, "impressions": report.impressions,
        "subject_minute_rows": report.subject_minute_rows}))


@dg.job(description="Repair the hours in the ledger of changed hours (pipelines.repair.ledger).")
def repair_changed_hours():
    repair_changed_hours_op()


# Every 10 minutes: a late event reaches the dashboards' rollups within about that.
repair_changed_hours_schedule = dg.ScheduleDefinition(job=repair_changed_hours, cron_schedule="*/10 * * * *",
                                                      execution_timezone="UTC")
