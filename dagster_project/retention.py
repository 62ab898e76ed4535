"""Retention (pipelines.repair.retention): every day, raw partitions older than
VIEWCOUNT_RAW_RETENTION_DAYS are dropped; the rollups stay."""

import dagster as dg

from dagster_project.resources import ClickHouseResource


@dg.op(description="Drop the partitions of events_raw, space_presence and dead_letters older than the raw "
       "retention (VIEWCOUNT_RAW_RETENTION_DAYS; 0 keeps everything).")
def drop_expired_raw_partitions_op(context: dg.OpExecutionContext, clickhouse: ClickHouseResource) -> None:
    from pipelines.config import Settings
    from pipelines.repair import retention

    days = Settings.from_env().raw_retention_days
    with clickhouse.client() as client:
        report = retention.drop_expired(client, days, shape=clickhouse.shape())
    if report.cutoff is None:
        context.log.info("raw retention is off (VIEWCOUNT_RAW_RETENTION_DAYS=0): nothing dropped")
        return
    context.log.info(f"raw rows before {report.cutoff:%Y-%m-%d %H:%M} UTC ({days} days): dropped "
                     + (", ".join(f"{len(p)} partition(s) of {t}" for t, p in report.dropped.items()) or "nothing"))
    context.log_event(dg.AssetObservation(asset_key="raw_retention", metadata={
        "retention_days": days, "cutoff": f"{report.cutoff:%Y-%m-%d %H:%M}",
        **{f"{table}_partitions_dropped": len(p) for table, p in report.dropped.items()}}))


@dg.job(description="Drop raw partitions older than the retention (pipelines.repair.retention).")
def drop_expired_raw_partitions():
    drop_expired_raw_partitions_op()


# Daily at 03:30 UTC: the cutoff moves by an hour's partition each hour; a day's lag is what is promised.
drop_expired_raw_partitions_schedule = dg.ScheduleDefinition(
    job=drop_expired_raw_partitions, cron_schedule="30 3 * * *", execution_timezone="UTC")
