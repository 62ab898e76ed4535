"""The Dagster entry point loads, with the backfill asset, the reconciliation check and its schedule."""

import dagster as dg

from dagster_project.definitions import defs
from dagster_project.partitions import hourly


def test_definitions_load_with_assets_check_and_schedule():
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        "post_minute_rollups", "post_minute_reconciliation"}
    checks = {key.name for key in graph.asset_check_keys}
    assert checks == {"stream_agrees_with_archive"}
    schedule = defs.resolve_schedule_def("reconcile_closed_hour_schedule")
    assert schedule.cron_schedule == "15 * * * *"


def test_partitions_are_utc_hours_from_the_night():
    keys = hourly.get_partition_keys_in_range(dg.PartitionKeyRange("2024-08-12-23:00", "2024-08-13-02:00"))
    assert keys == ["2024-08-12-23:00", "2024-08-13-00:00", "2024-08-13-01:00", "2024-08-13-02:00"]


def test_resources_come_from_the_environment():
    resources = defs.resources
    assert set(resources) >= {"clickhouse", "kafka"}
