"""Erasure as Dagster jobs (pipelines.repair.erasure): a batch of viewers erased from a file of ids,
and the sweep, every 10 minutes, of rows of erased viewers that arrived after their erasure."""

from pathlib import Path

import dagster as dg

from dagster_project.resources import ClickHouseResource


class ErasureBatch(dg.Config):
    """A file of viewer ids, one a line: the ids stay out of Dagster's run storage and logs (only
    the file's path is recorded); the file is deleted once the erasure is recorded, unless keep_file."""

    ids_file: str
    requested_by: str
    keep_file: bool = False


def _observe(context, report) -> None:
    context.log_event(dg.AssetObservation(asset_key="erasure_requests", metadata={
        "request_id": report.request_id, "viewers": report.viewers, "hours_rebuilt": len(report.hours),
        **{f"{table}_rows": n for table, n in report.rows.items()}, "seconds": round(report.seconds, 1)}))


@dg.op(description="Erase the viewers listed in a file from every table and sketch, rebuild their hours, "
       "record the request.")
def erase_viewers_op(context: dg.OpExecutionContext, config: ErasureBatch, clickhouse: ClickHouseResource) -> None:
    from pipelines.repair import erasure

    path = Path(config.ids_file)
    ids = [int(line) for line in path.read_text().split() if line.strip()]
    with clickhouse.client() as client:
        report = erasure.erase(client, ids, requested_by=config.requested_by, shape=clickhouse.shape())
    context.log.info(f"request {report.request_id}: {report.viewers} viewer(s), rows deleted {report.rows}, "
                     f"{len(report.hours)} hour(s) rebuilt in {report.seconds:.1f} s")
    _observe(context, report)
    if not config.keep_file:
        path.unlink()


@dg.job(description="Erase a batch of viewers (pipelines.repair.erasure; docs/access.md, Erasure).")
def erase_viewers():
    erase_viewers_op()


@dg.op(description="Erase again the erased viewers whose rows arrived after their erasure (a replay, a late "
       "or a new event), and rebuild those hours.")
def sweep_erased_viewers_op(context: dg.OpExecutionContext, clickhouse: ClickHouseResource) -> None:
    from pipelines.repair import erasure

    with clickhouse.client() as client:
        report = erasure.sweep(client, shape=clickhouse.shape())
    if report is None:
        context.log.info("no rows of erased viewers arrived since the last sweep")
        return
    context.log.info(f"{report.viewers} erased viewer(s) had rows again: deleted {report.rows}, "
                     f"{len(report.hours)} hour(s) rebuilt")
    _observe(context, report)


@dg.job(description="Sweep the archive for rows of erased viewers loaded after their erasure.")
def sweep_erased_viewers():
    sweep_erased_viewers_op()


# Every 10 minutes, offset from the ledger's repair (which rebuilds what the sweep notes anyway).
sweep_erased_viewers_schedule = dg.ScheduleDefinition(job=sweep_erased_viewers, cron_schedule="5-59/10 * * * *",
                                                      execution_timezone="UTC")
