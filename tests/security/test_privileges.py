"""Who reads what on the real ClickHouse 18.16, per user and per table (docs/access.md, "Who reads
what"), and what the read-only users see of the others' queries."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from pipelines.store.clickhouse import DASHBOARD_TABLES, EVENTS_RAW, connect, connect_analyst, connect_dashboard

pytestmark = pytest.mark.integration

READS = "reads"
ACCESS_DENIED = 291
UNKNOWN_TABLE = 60
IP_ADDRESS_NOT_ALLOWED = 195
USERS = ("writer", "analyst", "dashboard", "default")


def _login(user: str, settings) -> Client:
    if user == "writer":
        return connect(settings)
    if user == "analyst":
        return connect_analyst(settings)
    if user == "dashboard":
        return connect_dashboard(settings)
    target = settings.clickhouse
    return Client(host=target.host, port=target.port, user="default", password="", database="default",
                  connect_timeout=5, send_receive_timeout=30)


def _outcome(client: Client, statement: str) -> str | int:
    try:
        client.execute(statement)
        return READS
    except ch_errors.ServerException as exc:
        return exc.code


def _tables(writer, database: str) -> list[str]:
    """Every table of database but the Kafka consumers (reading one would take records from the
    loader's consumer group: docs/access.md, what is left)."""
    return [name for name, engine in writer.execute(
        "SELECT name, engine FROM system.tables WHERE database = %(db)s ORDER BY name", {"db": database})
        if engine != "Kafka"]


def expected(user: str, database: str, table: str, settings) -> str | int:
    """The access model, one line per user (docs/access.md)."""
    companion = settings.clickhouse.dashboard_database
    if user == "default":
        return IP_ADDRESS_NOT_ALLOWED  # it cannot log in at all
    if user == "writer":
        return READS
    if user == "analyst":
        # Its analysis companion (every table but the key's, ids as pseudonyms) and the dashboard's;
        # nothing of the project's database (viewer ids) nor of the private one (the key).
        return READS if database in (settings.clickhouse.analysis_database, companion) else ACCESS_DENIED
    # dashboard: its companion's read-through views (and their empty sources), nothing of the main database
    if database == companion and table.removesuffix("_source") in DASHBOARD_TABLES:
        return READS
    return ACCESS_DENIED


@pytest.mark.parametrize("user", USERS)
def test_each_user_reads_exactly_the_tables_of_its_role(clickhouse, stack_settings, user):
    target = stack_settings.clickhouse
    databases = (target.database, target.dashboard_database, target.private_database, target.analysis_database)
    tables = [(db, t) for db in databases for t in _tables(clickhouse, db)]
    assert EVENTS_RAW in {t for _, t in tables} and len(tables) > 10
    try:
        client = _login(user, stack_settings)
        seen = {f"{db}.{t}": _outcome(client, f"SELECT count() FROM {db}.{t}") for db, t in tables}
    except ch_errors.ServerException as exc:  # the login itself refused
        seen = {f"{db}.{t}": exc.code for db, t in tables}
    assert seen == {f"{db}.{t}": expected(user, db, t, stack_settings) for db, t in tables}


@pytest.mark.parametrize("user", ("analyst", "dashboard"))
def test_no_reader_may_use_clickhouses_kafka_consumers(clickhouse, stack_settings, user):
    """A SELECT of a Kafka table consumes with the table's group: the rows it read would never reach
    their table. The consumers live in a database of their own that no reader may use (DESCRIBE,
    which consumes nothing, stands for any query: 18.16 checks the database first)."""
    from pipelines.stream import streams

    streams.ensure(clickhouse, stack_settings)
    target = stack_settings.clickhouse
    kafka_tables = "SELECT database, name FROM system.tables WHERE engine = 'Kafka' AND database IN (%(a)s, %(b)s)"
    found = clickhouse.execute(kafka_tables, {"a": target.database, "b": target.queues_database})
    assert sorted(found) == sorted((target.queues_database, streams.queue_table(o))
                                   for o in streams.LOADED_BY_CLICKHOUSE), "every consumer, and only in its database"
    client = _login(user, stack_settings)
    assert {name: _outcome(client, f"DESCRIBE TABLE {db}.{name}") for db, name in found} == \
        {name: ACCESS_DENIED for _, name in found}


@pytest.mark.parametrize("user", ("analyst", "dashboard"))
def test_read_only_users_see_nothing_of_the_other_databases_names(clickhouse, stack_settings, user):
    target = stack_settings.clickhouse
    client = _login(user, stack_settings)
    visible = {db for (db,) in client.execute("SELECT DISTINCT database FROM system.tables")}
    if user == "dashboard":
        assert target.database not in visible and target.dashboard_database in visible
    else:
        assert {target.analysis_database, target.dashboard_database} <= visible
        assert not visible & {target.database, target.private_database, target.queues_database}


def test_no_users_query_is_logged_where_the_read_only_users_could_read_it(clickhouse, stack_settings):
    """18.16 lets every user read system.query_log (and query_thread_log), so no profile logs
    queries: what each user asked is in neither log for the others to read."""
    marker = f"privacy_marker_{secrets.token_hex(4)}"
    clients = {user: _login(user, stack_settings) for user in ("writer", "analyst", "dashboard")}
    for user, client in clients.items():
        client.execute(f"SELECT '{marker}_{user}'")
    clickhouse.execute("SYSTEM FLUSH LOGS")
    for reader in ("writer", "analyst", "dashboard"):
        for log in ("query_log", "query_thread_log"):
            statement = (f"SELECT DISTINCT user FROM system.{log} WHERE query LIKE '%{marker}%' "
                         f"AND query NOT LIKE '%system.{log}%'")
            try:
                found = clients[reader].execute(statement)
            except ch_errors.ServerException as exc:
                assert exc.code == UNKNOWN_TABLE  # a server that never logged has no log table
                continue
            assert found == [], f"{reader} reads the queries of {found} in system.{log}"


@pytest.mark.xfail(reason="18.16 lists every user's running queries in system.processes (and SHOW PROCESSLIST) "
                   "to every user; no setting hides them (docs/access.md, what is left)", strict=True)
@pytest.mark.parametrize("reader", ("analyst", "dashboard"))
def test_read_only_users_do_not_see_other_users_running_queries(clickhouse, stack_settings, reader):
    marker = f"running_marker_{secrets.token_hex(4)}"
    writer = connect(stack_settings)
    running = threading.Thread(target=writer.execute, args=(f"SELECT sleep(2), '{marker}'",))
    running.start()
    try:
        client = _login(reader, stack_settings)
        deadline = time.monotonic() + 2
        seen = []
        while not seen and time.monotonic() < deadline:
            seen = client.execute("SELECT user FROM system.processes WHERE query LIKE %(m)s AND user != %(me)s",
                                  {"m": f"%{marker}'%", "me": client.connection.user})
        assert seen == [], f"{reader} sees the running query of {seen}"
    finally:
        running.join()
