"""Shared fixtures: settings from the environment, and per-session isolation on the real services.

Integration and end-to-end tests use the local stack (`make up`) or whatever VIEWCOUNT_* points
at; each session gets its own topic prefix and ClickHouse database, so runs never see each other.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import sys
import time
from dataclasses import replace

import pytest

from pipelines.config import Settings, Topics
from tests.support import REMOVALS

# Every test runs in UTC, whatever the machine's zone: setting TZ alone changes nothing for
# this already running process until tzset() reads it again.
os.environ["TZ"] = "UTC"
time.tzset()

# A suite started in the background without job control (`make test &` in a script, some CI
# runners) inherits SIGINT and SIGQUIT ignored, and so would every process it starts: dagster dev
# stops its webserver and daemon with SIGINT, so each stop then waited out its 60 s timeout (found
# when test_access took 67 s instead of 9). The suite's children get the default dispositions.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGQUIT, signal.SIG_DFL)

# The JVMs the tests start (the job's, in this process or as `viewcount run`, and the session
# cluster's) compile with C1 alone. The tests' nights are small, so a job's life is mostly its
# start, and on two cores C2's compiler threads slowed that start more than C2's code sped up
# the rest: a 1:20,000 night's bounded run took 22 s with C2 and 15 s without, and the 1:1000 night's
# 47 s and 44 s (docs/testing.md). Same job, same results: only how its bytecode is compiled changes.
# A JVM_ARGS of the caller's own is left as it is.
os.environ.setdefault("JVM_ARGS", "-XX:TieredStopAtLevel=1")

# VIEWCOUNT_TEST_ORDER_SEED=N runs the modules, and the tests inside each module, in an order
# shuffled with seed N (CI does, .ci/run): no test may depend on another's data or order. Tests
# stay grouped by module, so a module's fixtures are still set up once.
ORDER_SEED = os.environ.get("VIEWCOUNT_TEST_ORDER_SEED", "")


def pytest_report_header(config):
    return f"test order: shuffled with VIEWCOUNT_TEST_ORDER_SEED={ORDER_SEED}" if ORDER_SEED else None


def pytest_collection_modifyitems(config, items):
    if not ORDER_SEED:
        return
    rng = random.Random(int(ORDER_SEED))
    by_module: dict[str, list] = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::")[0], []).append(item)
    modules = sorted(by_module)
    rng.shuffle(modules)
    items[:] = [item for module in modules for item in rng.sample(by_module[module], len(by_module[module]))]


@pytest.fixture(scope="session")
def session_tag() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def stack_settings(session_tag) -> Settings:
    """Settings for this session: a fresh topic prefix and database on the configured services."""
    base = Settings.from_env()
    return replace(base, clickhouse_url=base.clickhouse.url(f"viewcount_test_{session_tag}"),
                   topics=Topics(prefix=f"test{session_tag}"))


@pytest.fixture(scope="session")
def clickhouse(stack_settings, kafka_topics):
    """A writer connection to this session's freshly migrated database (dropped at the end).

    It depends on the session's topics so that it is torn down before them: dropping a database
    whose Kafka tables read topics already deleted hangs 18.16 in librdkafka's consumer close."""
    from pipelines.stack.clickhouse_server import allow_readers
    from pipelines.store.clickhouse import connect
    from pipelines.store.migrate import apply_migrations, drop_database

    admin = connect(stack_settings, database="default")
    apply_migrations(admin, database=stack_settings.clickhouse.database)
    allow_readers(stack_settings)  # the local stack's dashboard and analyst may read their companion databases
    client = connect(stack_settings)
    yield client
    drop_database(admin, stack_settings.clickhouse.database)  # one drop at a time with the namespaces' (the lock)


def pytest_sessionfinish(session, exitstatus):
    """Every namespace removed before the session ends (also when no test used `clickhouse`); one
    that could not be is a failed session."""
    try:
        REMOVALS.wait()
    except RuntimeError as exc:
        print(f"\n{exc}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def kafka_topics(stack_settings):
    from pipelines.stack.kafka_broker import create_topics

    create_topics(stack_settings)
    yield stack_settings.topics
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": stack_settings.kafka_bootstrap})
    for future in admin.delete_topics(stack_settings.topics.all(), operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best effort clean-up
            future.result()


@pytest.fixture()
def own_stack(stack_settings, session_tag, request):
    """Topics and a migrated database of this test's own, for a test that reads or counts
    everything it finds (the session's topics hold the other tests' records); removed at the end."""
    from tests.support import namespace

    with namespace(stack_settings, f"{request.node.name.removeprefix('test_')[:10]}_{session_tag}") as settings:
        yield settings
