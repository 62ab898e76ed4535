"""Fixtures of the fault tests: a stack of their own for the tests that kill or pause services."""

from __future__ import annotations

import secrets

import pytest
from harness import private_settings, stack_command


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory):
    """Kafka and ClickHouse of this module alone (own ports and state folder), migrated; stopped
    at the end. Tests here kill -9 and SIGSTOP these services, never the shared stack."""
    from pipelines.clickhouse import connect
    from pipelines.migrate import apply_migrations

    settings = private_settings(tmp_path_factory.mktemp("stack"), f"faults{secrets.token_hex(3)}")
    try:
        stack_command(settings, "up")
        apply_migrations(connect(settings, database="default"), settings.clickhouse.database)
        yield settings
    finally:
        stack_command(settings, "down")
