"""What every test tier shares: one way to wait (poll with a deadline), one way to hand settings to a
subprocess (its environment), and one namespace per test or module (topics, database and the
database's dashboard companion, always removed: behind the tests, by one thread)."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from pipelines.config import Settings, Topics


def poll(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2,
         alive=None, check: Callable[[], None] | None = None):
    """Wait for condition() to be truthy and return it, failing with `what` at the deadline.
    `alive` (a pipeline run: alive(), process, tail()) fails it at once when that run has exited;
    `check()` may raise to fail it at once for any other reason (a server process that died)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if alive is not None and not alive.alive():
            raise AssertionError(f"the pipeline exited (code {alive.process.returncode}) while waiting for "
                                 f"{what}:\n{alive.tail()}")
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


def answers(url: str, timeout_s: float = 2.0) -> bytes | None:
    """The body at url, or None while nothing answers there (for poll)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read() or b" "
    except OSError:
        return None


def get_json(url: str, headers: dict | None = None):
    """GET url: (status, headers, the JSON body or None), an HTTP error status included."""
    import json
    import urllib.error

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, response.headers, json.loads(body) if body else None
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return exc.code, exc.headers, json.loads(body) if body else None


def pipeline_env(settings: Settings, flink_log_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a `viewcount` subprocess that reads `settings`: the only way tests pass
    settings to a child process (every knob is a VIEWCOUNT_* variable, pipelines/config.py)."""
    env = {**os.environ,
           "VIEWCOUNT_TOPIC_PREFIX": settings.topics.prefix,
           "VIEWCOUNT_CLICKHOUSE_URL": settings.clickhouse_url,
           "VIEWCOUNT_CLICKHOUSE_HTTP_PORT": str(settings.clickhouse_http_port),
           "VIEWCOUNT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "VIEWCOUNT_KAFKA_CONTROLLER_PORT": str(settings.kafka_controller_port),
           "VIEWCOUNT_STATE_DIR": str(settings.state_dir),
           "VIEWCOUNT_CLICKHOUSE_CLUSTER": settings.clickhouse_cluster,
           "VIEWCOUNT_CLICKHOUSE_SERVERS_CLUSTER": settings.clickhouse_servers_cluster,
           **extra}
    if flink_log_dir is not None:
        flink_log_dir.mkdir(parents=True, exist_ok=True)
        env["FLINK_LOG_DIR"] = str(flink_log_dir)
    return env


def module_namespace(name: str):
    """A module-scoped fixture: `namespace` on the session's services, named `name` and the session's
    tag. `settings = module_namespace("backfill")` gives a module its own; `stack_settings = ...`
    puts every fixture of the module that reads stack_settings in it."""
    import pytest

    @pytest.fixture(scope="module")
    def own_namespace(stack_settings, session_tag):
        """The module's topics, database and dashboard companion (tests.support.module_namespace)."""
        with namespace(stack_settings, f"{name}{session_tag}") as settings:
            yield settings

    return own_namespace


@contextlib.contextmanager
def connected(settings: Settings):
    """A writer's connection to the settings' database, closed at the end."""
    from pipelines.store.clickhouse import connect

    client = connect(settings)
    try:
        yield client
    finally:
        client.disconnect()


@contextlib.contextmanager
def namespace(base: Settings, name: str, replication_factor: int = 1, **overrides) -> Iterator[Settings]:
    """Topics and a migrated database of their own (and the database's dashboard companion, which
    the local stack's dashboard user may read), on the same services; all removed at the end, the
    database before the topics (dropping a Kafka table whose topic is gone hangs 18.16), and the
    jobs' restore points under the state folder. Settings with a ClickHouse cluster
    (pipelines.cluster.cluster_settings) get the cluster's shape, made and dropped ON CLUSTER; the
    topics get `replication_factor` copies."""
    from confluent_kafka.admin import AdminClient

    from pipelines.stack.clickhouse_server import allow_readers
    from pipelines.stack.kafka_broker import create_topics
    from pipelines.store import shapes
    from pipelines.store.clickhouse import connect
    from pipelines.store.migrate import apply_migrations, drop_database

    target = base.clickhouse
    settings = replace(base, topics=Topics(prefix=name), clickhouse_url=target.url(f"viewcount_{name}"),
                       **overrides)
    shape = shapes.configured(settings)
    create_topics(settings, replication_factor=replication_factor)
    admin = connect(settings, database="default")
    apply_migrations(admin, settings.clickhouse.database, shape=shape)
    if shape is None:  # the cluster's readers are not made yet (docs/scale-out.md, Not done yet)
        allow_readers(settings)

    def remove() -> None:
        drop_database(admin, settings.clickhouse.database, shape)
        admin.disconnect()
        kafka = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        for future in kafka.delete_topics(settings.topics.all(), operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best effort: a topic already gone is fine
                future.result()
        shutil.rmtree(settings.checkpoint_dir.parent, ignore_errors=True)  # .state/flink/<this prefix>

    try:
        yield settings
    finally:
        REMOVALS.submit(remove)


class Removals:
    """Namespaces removed by one thread behind the tests. 18.16 takes 3 s to drop each Kafka table
    (pipelines.store.migrate.drop_database): 10-16 s a namespace, ~160 s of a `make test` spent
    waiting. A namespace's names are its own, so nothing later waits for them to go; the drops stay
    one at a time (migrate.KAFKA_TABLE_DROPS). `wait()` (the session's end) waits for all of them
    and raises what any of them raised."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._failures: list[BaseException] = []

    def submit(self, removal: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="namespace-removals", daemon=True)
            self._thread.start()
        self._queue.put(removal)

    def _run(self) -> None:
        while True:
            removal = self._queue.get()
            try:
                removal()
            except BaseException as exc:  # noqa: BLE001 - raised again by wait()
                self._failures.append(exc)
            finally:
                self._queue.task_done()

    def join(self) -> None:
        """Wait until every namespace submitted so far is removed (or failed to be: wait() says)."""
        self._queue.join()

    def wait(self) -> None:
        self.join()
        failures, self._failures = self._failures, []
        if failures:
            raise RuntimeError(f"{len(failures)} namespace(s) could not be removed: {failures[0]!r}") from failures[0]


REMOVALS = Removals()
