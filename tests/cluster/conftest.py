"""The cluster stack for tests/cluster/: brought up once for the session (or the one running used),
and stopped at the end only if this session started it."""

from __future__ import annotations

import time

import pytest

from pipelines import cluster
from pipelines.config import Settings
from tests.support import REMOVALS


@pytest.fixture(scope="module")
def timings(request):
    """Lines for the end of the module: what each step took, and the cluster's memory."""
    lines: list[str] = []
    yield lines
    plugins = request.config.pluginmanager
    with plugins.getplugin("capturemanager").global_and_fixture_disabled():  # else captured, never shown
        for line in lines:
            plugins.getplugin("terminalreporter").write_line(f"cluster: {line}")


@pytest.fixture(scope="session")
def cluster_session():
    """(settings, how it came up): the cluster for every module of the session."""
    settings = Settings.from_env()
    was_running = _all_running(settings)
    started = time.monotonic()
    cluster.up(settings)
    how = "already running" if was_running else "cold"
    yield settings, f"cluster up in {time.monotonic() - started:.1f} s ({how}); {cluster.status(settings)[-1]}"
    if not was_running:
        REMOVALS.join()  # the modules' namespaces are dropped ON CLUSTER, behind the tests: before the cluster stops
        cluster.down(settings)


@pytest.fixture(scope="module")
def cluster_stack(cluster_session, timings):
    """The cluster's settings; the module's report says how it came up and its memory at the end."""
    settings, came_up = cluster_session
    timings.append(came_up)
    yield settings
    timings.append("at the end: " + "; ".join(line.split(" (ports")[0] for line in cluster.status(settings)))


def _all_running(settings: Settings) -> bool:
    services = [cluster.zookeeper_service(settings), *cluster.kafka_services(settings).values(),
                *cluster.clickhouse_services(settings).values()]
    return all(service.running_pid() for service in services)
