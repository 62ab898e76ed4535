"""The Dagster entry point loads, with the backfill asset, the reconciliation check and its schedule."""

import dagster as dg
import pytest

from dagster_project.definitions import defs
from dagster_project.partitions import hourly


def test_definitions_load_with_assets_check_and_schedule():
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "post_minute_rollups", "post_minute_reconciliation", "subject_rollup_reconciliation", "subject_rollups"}
    checks = {key.name for key in graph.asset_check_keys}
    assert checks == {"stream_agrees_with_archive", "subject_rollups_agree_with_sources"}
    schedule = defs.resolve_schedule_def("reconcile_closed_hour_schedule")
    assert schedule.cron_schedule == "15 * * * *"
    repair = defs.resolve_schedule_def("repair_changed_hours_schedule")
    assert repair.cron_schedule == "*/10 * * * *" and repair.job_name == "repair_changed_hours"
    assert defs.resolve_job_def("repair_changed_hours").required_resource_keys - {"io_manager"} == {"clickhouse"}


def test_privacy_jobs_are_defined_with_their_schedules():
    assert {"erase_viewers", "sweep_erased_viewers", "drop_expired_raw_partitions"} <= {
        job.name for job in defs.resolve_all_job_defs()}
    assert defs.resolve_schedule_def("sweep_erased_viewers_schedule").cron_schedule == "5-59/10 * * * *"
    assert defs.resolve_schedule_def("drop_expired_raw_partitions_schedule").cron_schedule == "30 3 * * *"


def test_partitions_are_utc_hours_from_the_night():
    keys = hourly.get_partition_keys_in_range(dg.PartitionKeyRange("2024-08-12-23:00", "2024-08-13-02:00"))
    assert keys == ["2024-08-12-23:00", "2024-08-13-00:00", "2024-08-13-01:00", "2024-08-13-02:00"]


def test_every_resource_an_asset_needs_is_defined_and_none_is_left_unused():
    from dagster_project.assets import post_minute_reconciliation, post_minute_rollups

    needed = post_minute_rollups.required_resource_keys | post_minute_reconciliation.required_resource_keys
    assert needed - {"io_manager"} == set(defs.resources) == {"clickhouse"}  # Dagster supplies io_manager


def test_resources_read_the_environment_and_fall_back_to_the_local_stack(monkeypatch):
    from dagster_project.resources import resources
    from pipelines.config import Settings

    monkeypatch.delenv("VIEWCOUNT_CLICKHOUSE_URL", raising=False)
    assert resources()["clickhouse"].url == Settings().clickhouse_url
    monkeypatch.setenv("VIEWCOUNT_CLICKHOUSE_URL", "clickhouse://u:p@10.0.0.1:9000/elsewhere")
    url = resources()["clickhouse"].url
    assert isinstance(url, dg.EnvVar) and url.get_value() == "clickhouse://u:p@10.0.0.1:9000/elsewhere"


def test_every_rollup_table_is_rebuilt_by_one_builder_into_an_allowlisted_staging_table():
    from datetime import UTC, datetime

    from pipelines.repair import backfill

    tables = [table for builder in backfill.ROLLUP_BUILDERS for table in builder.tables]
    assert sorted(tables) == ["post_hour", "post_minute", "post_surface_minute"]
    hour = datetime(2024, 8, 13, 1, tzinfo=UTC)
    assert backfill.staging_name("post_minute", hour) == "post_minute_staging_2024081301"
    with pytest.raises(ValueError, match="not a rollup table"):
        backfill.staging_name("post_minute; DROP TABLE events_raw", hour)
    # A rebuild's version: the base (above any Kafka offset a stream row carries) plus the run's
    # epoch seconds, so a later rebuild outranks an earlier one.
    assert backfill.backfill_version(now=1_700_000_000) == backfill.BACKFILL_VERSION_BASE + 1_700_000_000
    assert backfill.backfill_version(now=1_700_000_001) > backfill.backfill_version(now=1_700_000_000)
    assert backfill.BACKFILL_VERSION_BASE == 2**62


def test_the_clickhouse_resource_disconnects_when_its_block_ends(monkeypatch):
    import dagster_project.resources as resources_module

    disconnected = []

    class Client:
        def disconnect(self):
            disconnected.append(True)

    monkeypatch.setattr(resources_module, "connect", lambda settings: Client())
    with resources_module.ClickHouseResource(url="clickhouse://u:p@127.0.0.1:1/db").client() as client:
        assert isinstance(client, Client) and not disconnected
    assert disconnected == [True]
    with pytest.raises(RuntimeError), resources_module.ClickHouseResource().client():
        raise RuntimeError("an asset failed")
    assert disconnected == [True, True], "closed on failure too"
