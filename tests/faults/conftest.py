"""Fixtures of the fault tests: namespaces whose topics keep their records, a private stack for
the tests that kill or pause services, and no pipeline left running after a test."""

from __future__ import annotations

import secrets

import harness
import pytest


@pytest.fixture(autouse=True)
def no_pipeline_left_running():
    yield
    while harness.STARTED:
        run = harness.STARTED.pop()
        if run.alive():
            run.kill_9()


@pytest.fixture()
def own_stack(request):
    """Topics without time retention (harness.fresh_namespace says why) and a migrated database of
    this test's own on the configured stack; all removed at the end."""
    from pipelines.config import Settings
    from tests.support import namespace

    name = f"{request.node.name.removeprefix('test_')[:10]}_{secrets.token_hex(4)}"
    with namespace(Settings.from_env(), name, topic_retention_ms=-1) as settings:
        yield settings


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory):
    """Kafka and ClickHouse of this module alone (own ports and state folder); stopped at the end.
    Tests here kill -9 and SIGSTOP these services, never the shared stack."""
    settings = harness.private_settings(tmp_path_factory.mktemp("stack"), f"faults{secrets.token_hex(3)}")
    try:
        harness.stack_command(settings, "up")
        yield settings
    finally:
        harness.stack_command(settings, "down")
