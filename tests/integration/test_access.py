"""Who reads what: read-only users stay read-only, the dashboard reads rollups only, `default`
cannot log in, no password is in the repository, parameters are inert, and every
listener the project starts binds loopback (read from the sockets the processes opened)."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime

import pytest
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from pipelines import cli
from pipelines.config import REPO_ROOT
from pipelines.serve import query
from pipelines.stack.clickhouse_server import clickhouse_service
from pipelines.stack.kafka_broker import kafka_service
from pipelines.stack.services import stop_group
from pipelines.store.clickhouse import (
    DASHBOARD_TABLES,
    DEAD_LETTERS,
    EVENTS_RAW,
    POST_MINUTE,
    SPACE_PRESENCE,
    WRITABLE_TABLES,
    connect_analyst,
    connect_dashboard,
    insert_rows,
)
from tests.sockets import (
    assert_loopback_only,
    listening_sockets,
    loopback,
    process_tree,
)
from tests.support import answers, poll

READONLY = 164  # "Cannot ... in readonly mode", "Table functions are forbidden in readonly mode"
ACCESS_DENIED = 291  # "Access denied to database ..."
UNKNOWN_TABLE = 60
IP_ADDRESS_NOT_ALLOWED = 195  # "User default is not allowed to connect from address 127.0.0.1"
PER_VIEWER_TABLES = (EVENTS_RAW, SPACE_PRESENCE, DEAD_LETTERS)
POST = 10**12 + 7  # no generated night has a post this high: the session database is shared
WINDOW = datetime(2024, 8, 12, 23, 47, tzinfo=UTC)


def _default_user(settings) -> Client:
    """The passwordless `default` user, as a bare clickhouse-client on this machine would try."""
    target = settings.clickhouse
    return Client(host=target.host, port=target.port, user="default", password="", database="default",
                  connect_timeout=5, send_receive_timeout=60)


def _as(role: str, settings) -> tuple[Client, str]:
    """A connection as role, and how it names the session database's post_minute."""
    if role == "analyst":
        return connect_analyst(settings), POST_MINUTE
    return connect_dashboard(settings), POST_MINUTE  # the read-through view of its companion database


def _refused(client: Client, statement: str, params=None) -> int:
    with pytest.raises(ch_errors.ServerException) as refusal:
        client.execute(statement, params) if params is not None else client.execute(statement)
    return refusal.value.code


def _tables(writer) -> dict[str, int]:
    return {table: writer.execute(f"SELECT count() FROM {table}")[0][0] for table in sorted(WRITABLE_TABLES)}


@pytest.fixture(scope="module")
def seeded(stack_settings, clickhouse):
    """One rollup row and one archived view of our own, so every read has something to find."""
    insert_rows(clickhouse, POST_MINUTE,
                ("post_id", "window_start", "views", "impressions", "unique_viewers_sketch", "unique_viewers",
                 "version"), [(POST, WINDOW, 5, 1, b"", 5.0, 1), (POST, WINDOW, 7, 2, b"", 7.0, 2)])
    insert_rows(clickhouse, EVENTS_RAW,
                ("event_type", "event_id", "event_time", "event_time_ms", "post_id", "author_id", "viewer_id",
                 "surface", "client", "action"),
                [("view", "access-1", WINDOW, int(WINDOW.timestamp() * 1000), POST, 1, 424242, "home", "web", "")])
    return stack_settings


ROLES = ("analyst", "dashboard")  # `default` cannot log in: test_default_cannot_log_in
WRITES = {
    "insert": "INSERT INTO {table} (post_id, window_start, views, impressions, unique_viewers_sketch, "
              "unique_viewers, version) VALUES",
    "alter": "ALTER TABLE {table} DELETE WHERE 1",
    "alter_add_column": "ALTER TABLE {table} ADD COLUMN sneaky UInt8",
    "drop": "DROP TABLE {table}",
    "create": "CREATE TABLE {database}.sneaky (a UInt8) ENGINE = Memory",
    "truncate": "TRUNCATE TABLE {table}",
    "set_readonly_0": "SET readonly = 0",
    "file": "SELECT * FROM file('../../credentials.env', 'TSV', 'line String')",
    "url": "SELECT * FROM url('http://127.0.0.1:{http_port}/?query=SELECT%201', 'TSV', 'line String')",
    "remote": "SELECT count() FROM remote('{host}:{port}', {database}.events_raw, '{writer}', '')",
}


@pytest.mark.integration
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("attempt", sorted(WRITES))
def test_read_only_users_are_refused_every_write_and_escape(seeded, clickhouse, role, attempt):
    client, table = _as(role, seeded)
    target = seeded.clickhouse
    statement = WRITES[attempt].format(table=table, database=target.database, http_port=seeded.clickhouse_http_port,
                                       host=target.host, port=target.port, writer=target.user)
    before = _tables(clickhouse)
    row = [(POST + 1, WINDOW, 1, 0, b"", 1.0, 1)]
    code = _refused(client, statement, row if attempt == "insert" else None)
    assert code == READONLY  # refused for being read-only, not only for where it pointed
    assert _tables(clickhouse) == before
    assert not clickhouse.execute("EXISTS TABLE sneaky")[0][0]


@pytest.mark.integration
@pytest.mark.parametrize("role", ROLES)
def test_nobody_reads_the_writers_credentials(seeded, role):
    client, _ = _as(role, seeded)
    for path in (seeded.credentials_file, seeded.state_dir / "clickhouse" / "users.xml"):
        assert _refused(client, f"SELECT * FROM file('{path}', 'TSV', 'line String')") == READONLY
    # 18.16 keeps users in users.xml, not in a system table anyone could read.
    assert _refused(client, "SELECT * FROM system.users") == UNKNOWN_TABLE


@pytest.mark.integration
def test_passwords_are_generated_private_and_hashed(seeded):
    credentials = seeded.credentials_file
    if not credentials.exists():
        pytest.skip(f"not the local stack ({credentials} absent): its users are its administrator's")
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    users = (seeded.state_dir / "clickhouse" / "users.xml")
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    text = users.read_text()
    for role in ("writer", "analyst", "dashboard"):
        password = seeded.clickhouse_as(role).password
        assert len(password) >= 24 and password not in text
    assert re.findall(r"<password>([^<]*)</password>", text) == [""]  # default's, and it logs in from nowhere
    passwords = [seeded.clickhouse_as(role).password for role in ("writer", "analyst", "dashboard")]
    assert [name for name, text in _tracked_texts() if any(p in text for p in passwords)] == []


def _tracked_texts():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    for name in tracked.stdout.split():
        path = REPO_ROOT / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            yield name, path.read_text(errors="replace")


def test_no_password_is_written_in_the_repository():
    users = r"(?:viewcount_writer|analyst|dashboard|default)"
    credential = re.compile(
        rf"clickhouse(?:\+native)?://{users}:(?!\.\.\.@)[^@\s]+@"  # a URL (Superset's too) with a password
        r"|<password>[^<]+</password>"  # a users-file password in clear
        r"|<password_sha256_hex>[0-9a-f]{64}</password_sha256_hex>"  # or its hash, rendered
        rf"|--password[ =]['\"]?{users}\b"  # the old literal passwords, equal to the user names
        rf"|password\s*=\s*['\"]{users}['\"]")
    found = [f"{name}: {m.group(0)}" for name, text in _tracked_texts() for m in credential.finditer(text)]
    assert found == []


@pytest.mark.integration
def test_the_dashboard_reads_rollups_and_nothing_per_viewer(seeded, clickhouse):
    dashboard = connect_dashboard(seeded)
    database = seeded.clickhouse.database
    views = dashboard.execute("SELECT views, impressions FROM post_minute FINAL WHERE post_id = %(post)s",
                              {"post": POST})
    assert views == [(7, 2)]  # the replacing row, through the read-through view
    assert query.post_figures(dashboard, POST).counts["views"] == 7
    for table in PER_VIEWER_TABLES:
        assert _refused(dashboard, f"SELECT count() FROM {database}.{table}") == ACCESS_DENIED
        assert _refused(dashboard, f"SELECT count() FROM {table}") == UNKNOWN_TABLE
    assert _refused(dashboard, f"SELECT count() FROM post_minute AS m JOIN {database}.events_raw AS e "
                               "USING post_id") == ACCESS_DENIED
    assert _refused(dashboard, f"SELECT * FROM merge('{database}', '.*')") == READONLY
    # Not even the names of the main database's tables.
    assert dashboard.execute("SELECT name FROM system.tables WHERE database = %(db)s", {"db": database}) == []
    shown = {name for (name,) in dashboard.execute("SHOW TABLES")}
    assert {name for name in shown if not name.endswith("_source")} == DASHBOARD_TABLES
    assert _refused(dashboard, f"USE {database}") == ACCESS_DENIED


@pytest.mark.integration
def test_the_analyst_reads_every_table_with_viewers_as_pseudonyms(seeded, clickhouse):
    """(tests/security/test_pseudonyms.py has the rest.)"""
    from pipelines.store.pseudonyms import pseudonym, read_key

    analyst = connect_analyst(seeded)
    assert analyst.execute("SELECT viewer_id FROM events_raw WHERE post_id = %(post)s", {"post": POST}) == \
        [(pseudonym(read_key(clickhouse), 424242),)]


@pytest.mark.integration
def test_default_cannot_log_in(seeded):
    """`default` has no networks: not even loopback. (Were it let in, it is still read-only and
    confined to the empty `default` database: users.xml.)"""
    assert _refused(_default_user(seeded), "SELECT 1") == IP_ADDRESS_NOT_ALLOWED
    # Nor over HTTP without credentials (the same user).
    sql = f"SELECT count() FROM {seeded.clickhouse.database}.{EVENTS_RAW}"
    url = f"http://{seeded.clickhouse.host}:{seeded.clickhouse_http_port}/?" + urllib.parse.urlencode({"query": sql})
    with pytest.raises(urllib.error.HTTPError) as refusal:
        urllib.request.urlopen(url, timeout=10)
    assert f"Code: {IP_ADDRESS_NOT_ALLOWED}" in refusal.value.read().decode()


INJECTIONS = (
    "1 OR 1=1",
    "0) OR (1=1",
    "1; DROP TABLE post_minute",
    "1' OR '1'='1",
    "1'); DROP TABLE events_raw; --",
    "1 UNION ALL SELECT viewer_id, 0, 0, '' FROM events_raw",
    "\\'; TRUNCATE TABLE post_minute; --",
)


@pytest.mark.integration
@pytest.mark.parametrize("role", ("writer", "dashboard"))
def test_query_api_parameters_carrying_sql_are_inert(seeded, clickhouse, role):
    client = clickhouse if role == "writer" else connect_dashboard(seeded)
    before = _tables(clickhouse)
    for text in INJECTIONS:
        # A bound parameter is one literal: it comes back as the very string sent...
        assert client.execute("SELECT %(text)s", {"text": text}) == [(text,)]
        # ...so as a post id it is a String compared with a UInt64, and nothing runs.
        with pytest.raises(ch_errors.ServerException) as refusal:
            query.post_figures(client, text)
        assert refusal.value.code == 43 and "(UInt64, String)" in refusal.value.message, text
    assert _tables(clickhouse) == before


@pytest.mark.integration
def test_cli_parameters_carrying_sql_are_refused_before_any_query(seeded, clickhouse, monkeypatch, capsys):
    monkeypatch.setenv("VIEWCOUNT_CLICKHOUSE_URL", seeded.clickhouse_url)
    before = _tables(clickhouse)
    for text in INJECTIONS:
        with pytest.raises(SystemExit) as refusal:  # argparse: post_id is an integer
            cli.main(["query", "post", text])
        assert refusal.value.code == 2
        assert cli.main(["query", "subject", text]) == 2
        assert cli.main(["query", "subject", "space-2024-08-12", "--from", text, "--to", "2024-08-13 00:00"]) == 2
        assert cli.main(["query", "subject", "space-2024-08-12", "--from", "2024-08-12 19:47",
                         "--to", "2024-08-12 22:47", "--tz", text]) == 2
    err = capsys.readouterr().err
    assert "not a time" in err and "unknown time zone" in err
    assert _tables(clickhouse) == before


# --- listeners ----------------------------------------------------------------------------------------


def test_the_listener_check_tells_loopback_from_any_address():
    """The check is not vacuous: this process's own sockets, on every address and on loopback."""
    with socket.socket() as anywhere, socket.socket() as local, socket.socket(socket.AF_INET6) as local6:
        for sock, host in ((anywhere, "0.0.0.0"), (local, "127.0.0.1"), (local6, "::1")):
            sock.bind((host, 0))
            sock.listen()
        found = {port: address for address, port in listening_sockets({os.getpid()})}
        assert str(found[anywhere.getsockname()[1]]) == "0.0.0.0"
        assert not loopback(found[anywhere.getsockname()[1]])
        assert loopback(found[local.getsockname()[1]]) and loopback(found[local6.getsockname()[1]])


@pytest.mark.integration
def test_kafka_and_clickhouse_listen_on_loopback_only(stack_settings):
    kafka = kafka_service(stack_settings).running_pid()
    clickhouse = clickhouse_service(stack_settings).running_pid()
    if kafka is None or clickhouse is None:
        pytest.skip(f"Kafka and ClickHouse were not started by this checkout's stack ({stack_settings.state_dir}): "
                    "an existing cluster's listeners are its administrator's")
    broker_port = int(stack_settings.kafka_bootstrap.rpartition(":")[2])
    assert_loopback_only("Kafka", process_tree(kafka), {broker_port, stack_settings.kafka_controller_port})
    assert_loopback_only("ClickHouse", process_tree(clickhouse),
                          {stack_settings.clickhouse.port, stack_settings.clickhouse_http_port})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_the_dagster_ui_listens_on_loopback_only(tmp_path, stack_settings):
    """`viewcount dagster` as the project starts it (its default host), webserver and code server."""
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "VIEWCOUNT_CLICKHOUSE_URL": stack_settings.clickhouse_url,
           "VIEWCOUNT_KAFKA_BOOTSTRAP": stack_settings.kafka_bootstrap}
    process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "dagster", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        def running() -> None:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]

        # dagster dev starts three processes: minutes on a busy 2-core box
        info = poll(lambda: answers(f"http://127.0.0.1:{port}/server_info"), 300, "the Dagster UI answering",
                    interval_s=0.5, check=running)
        assert "dagster_webserver_version" in json.loads(info)
        assert_loopback_only("Dagster", process_tree(process.pid), {port})
    finally:
        # dagster dev's three processes can take longer than the 60 s to stop on a busy 2-core box
        # (CI, 6 Dec, after this test's assertions had passed): how fast is not this test's promise.
        stop_group(process)


