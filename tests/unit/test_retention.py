"""Retention's arithmetic: which partitions are past the cutoff, and the setting."""

from datetime import UTC, datetime

from pipelines.config import Settings
from pipelines.repair import retention

NOW = datetime(2024, 11, 10, 12, 30, tzinfo=UTC)


def test_a_partition_goes_only_once_its_whole_period_is_older_than_the_cutoff():
    cut = retention.cutoff(90, NOW)
    assert cut == datetime(2024, 8, 12, 12, 30, tzinfo=UTC)
    assert retention.partition_end("events_raw", "2024081211") <= cut
    assert not retention.partition_end("events_raw", "2024081212") <= cut  # ends 13:00, after the cutoff
    assert retention.partition_end("dead_letters", "20240811") <= cut
    assert not retention.partition_end("dead_letters", "20240812") <= cut


def test_retention_is_90_days_by_default_configurable_and_off_at_zero(monkeypatch):
    monkeypatch.delenv("VIEWCOUNT_RAW_RETENTION_DAYS", raising=False)
    assert Settings.from_env().raw_retention_days == 90
    monkeypatch.setenv("VIEWCOUNT_RAW_RETENTION_DAYS", "7")
    assert Settings.from_env().raw_retention_days == 7
    assert retention.cutoff(0, NOW) is None
