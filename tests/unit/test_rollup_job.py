"""The job's transformation on in-memory rows: decode + validate, dedupe, post-minute rollups.

Runs the job's own SQL (the same functions `build` uses) on a file of payloads in Flink's batch
mode, without Kafka: the wiring is tested end to end elsewhere.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

import orjson
import pytest

from pipelines.config import Settings
from pipelines.ingest import schemas
from pipelines.rollups import sketches
from pipelines.store import row_binary
from pipelines.store.tables import OUTPUTS
from pipelines.stream import job_environment, job_sql, job_tables

SETTINGS = Settings.from_env()

T0 = 1723506420000  # 2024-08-12 23:47:00 UTC


def view(event_id, post_id=10, viewer_id=100, at_ms=T0, **extra):
    event = {"event_id": event_id, "event_time": at_ms, "post_id": post_id, "author_id": 7,
             "viewer_id": viewer_id, "surface": "home", "client": "ios"}
    event.update(extra)
    return orjson.dumps(event).decode()


@pytest.fixture(scope="module")
def t_env():
    from pyflink.table import EnvironmentSettings, TableEnvironment

    settings = Settings.from_env()
    env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    env.get_config().set("pipeline.jars", ";".join(
        jar.resolve().as_uri() for jar in (settings.udf_jar, *settings.udf_dependency_jars)))
    env.get_config().set("parallelism.default", "1")
    env.get_config().set("table.local-time-zone", "UTC")
    job_environment.register_functions(env)
    return env


def load(t_env, tmp_path, name, event_type, lines, arrival_ms=T0):
    """A source table of the job's format over a file of payloads; the file's modification time
    stands in for the records' Kafka time."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, ns=(arrival_ms * 1_000_000, arrival_ms * 1_000_000))
    origin = f"""
  {job_sql.quoted('topic')} STRING METADATA FROM 'file.name' VIRTUAL, {job_sql.quoted('partition')} AS 0,
  {job_sql.quoted('offset')} AS CAST(0 AS BIGINT),
  kafka_time TIMESTAMP_LTZ(3) METADATA FROM 'file.modification-time' VIRTUAL"""
    t_env.execute_sql(job_tables.event_source_ddl(
        name, event_type, origin, {"connector": "filesystem", "path": str(path)}, SETTINGS))
    t_env.execute_sql(f"CREATE TEMPORARY VIEW decoded_{name} AS "
                      f"{job_sql.decode_sql(event_type, name, SETTINGS)}")
    return f"decoded_{name}"


def rows(t_env, sql):
    with t_env.execute_sql(sql).collect() as results:
        return [tuple(row) for row in results]


def test_validation_spec_follows_the_schema_file():
    spec = schemas.validation_spec(schemas.load_schema("view"))
    assert [f["name"] for f in spec] == schemas.fields("view")
    by_name = {f["name"]: f for f in spec}
    assert by_name["viewer_id"]["required"] and by_name["viewer_id"]["kind"] == "integer"
    assert by_name["surface"]["enum"] == schemas.load_schema("view")["properties"]["surface"]["enum"]


MALFORMED_VIEWS = [
    ("not json at all", "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
    ('{"event_id": "x"} trailing', "not a JSON object"),
    (view("a", viewer_id=None), "missing required field viewer_id (logged-out traffic is not counted)"),
    (view("a", post_id="10"), "post_id must be an integer"),
    (view("a", surface="moon"), "surface is not one of the known values"),
    (view("a", at_ms=-5), "event_time is below its minimum 0"),
    (view(""), "event_id is shorter than 1"),
    (view("a", post_id=1.5), "post_id must be an integer"),
    (view("a", post_id=10).replace('"post_id":10', '"post_id":18446744073709551616'),
     "post_id does not fit in 64 bits"),
    ('{"event_id": NaN}', "not a JSON object"),
    (view("a", at_ms=T0 + 3_600_001), "event_time is more than 3600 s ahead of its arrival"),
    (view("a", at_ms=T0 - SETTINGS.event_max_age_s * 1000 - 1),
     f"event_time is more than {SETTINGS.event_max_age_s} s before its arrival"),
    (view("a", at_ms=4_070_908_800_000), "event_time is more than 3600 s ahead of its arrival"),  # 2099
    (view("a", at_ms=0), f"event_time is more than {SETTINGS.event_max_age_s} s before its arrival"),  # 1970
]


@pytest.fixture(scope="module")
def rejected(t_env, tmp_path_factory) -> dict[str, list]:
    """The reasons the job's format gives each payload of MALFORMED_VIEWS, all read by one job
    (each job costs ~1.5 s): by payload, one reason per record."""
    payloads = [payload for payload, _ in MALFORMED_VIEWS]
    assert len(set(payloads)) == len(payloads) and not any("\n" in payload for payload in payloads)
    decoded = load(t_env, tmp_path_factory.mktemp("malformed"), "bad", "view", payloads)
    reasons: dict[str, list] = {}
    for reason, payload in rows(t_env, f"SELECT reject_reason, payload FROM {decoded}"):
        reasons.setdefault(payload, []).append(reason)
    return reasons


@pytest.mark.parametrize("payload, reason", MALFORMED_VIEWS)
def test_malformed_views_are_rejected_with_their_reason(rejected, payload, reason):
    assert rejected.get(payload) == [reason]


def test_valid_view_is_decoded_into_typed_fields(t_env, tmp_path):
    decoded = load(t_env, tmp_path, "good", "view", [view("e1", post_id=42, viewer_id=9, extra_field=1)])
    (row,) = rows(t_env, f"SELECT reject_reason, event_id, event_time_ms, post_id, viewer_id, surface FROM {decoded}")
    assert row == (None, "e1", T0, 42, 9, "home")


def test_duplicate_events_are_counted_once_and_viewers_are_distinct(t_env, tmp_path):
    lines = [
        view("e1", viewer_id=1), view("e1", viewer_id=1),           # a redelivery: one view
        view("e2", viewer_id=1, at_ms=T0 + 1000),                   # same viewer, another view
        view("e3", viewer_id=2, at_ms=T0 + 59_999),
        view("e6", viewer_id=2, at_ms=T0 + 7, surface="search"),    # a viewer on two surfaces: one viewer
        view("e6", viewer_id=2, at_ms=T0 + 7, surface="home"),      # a redelivery that disagrees: one view,
                                                                    # in each surface it was seen on
        view("e4", viewer_id=3, at_ms=T0 + 60_000),                 # the next minute
        view("e5", post_id=11, viewer_id=1),
    ]
    impressions = [json.dumps({"event_id": "i1", "event_time": T0 + 5, "post_id": 10, "author_id": 7,
                               "viewer_id": 1, "surface": "home", "client": "ios", "action": "like"})] * 2
    decoded = {"view": load(t_env, tmp_path, "dup_views", "view", lines),
               "impression": load(t_env, tmp_path, "dup_impressions", "impression", impressions)}
    t_env.execute_sql(f"CREATE TEMPORARY VIEW dup_valid AS {job_sql.valid_events_sql(decoded)}")
    t_env.execute_sql(f"CREATE TEMPORARY VIEW dup_windows AS {job_sql.post_windows_sql('dup_valid')}")
    result = rows(t_env, f"SELECT post_id, window_start, `views`, impressions, deliveries, unique_viewers_sketch "
                         f"FROM ({job_sql.post_minute_sql('dup_windows')})")
    by_key = {(r[0], r[1]): r for r in result}
    first = by_key[(10, datetime(2024, 8, 12, 23, 47))]
    assert first[2:5] == (4, 1, 8)
    # The job's sketch is the one pipelines.rollups.sketches builds from the same viewers, byte for byte.
    assert bytes.fromhex(first[5]) == sketches.to_bytes(sketches.sketch_of([2, 1, 1, 2, 2]))
    assert by_key[(10, datetime(2024, 8, 12, 23, 48))][2:4] == (1, 0)
    assert by_key[(11, datetime(2024, 8, 12, 23, 47))][2:4] == (1, 0)
    assert len(result) == 3
    by_surface = rows(t_env, f"SELECT post_id, window_start, surface, action, `views`, impressions "
                             f"FROM ({job_sql.post_surface_minute_sql('dup_windows')})")
    assert sorted(by_surface) == sorted([
        (10, datetime(2024, 8, 12, 23, 47), "home", "", 4, 0),
        (10, datetime(2024, 8, 12, 23, 47), "home", "like", 0, 1),
        (10, datetime(2024, 8, 12, 23, 47), "search", "", 1, 0),
        (10, datetime(2024, 8, 12, 23, 48), "home", "", 1, 0),
        (11, datetime(2024, 8, 12, 23, 47), "home", "", 1, 0),
    ])


def test_the_change_keys_the_job_writes_name_what_the_feed_reads_from_the_records(t_env):
    """The Kafka key of a post-minute row and of a presence event (job_sql.CHANGE_KEYS), as Flink
    computes it, is the change the feed finds in the record itself (change_feed.KEY_OF)."""
    from pipelines.store.tables import POST_MINUTE_ROWS, PRESENCE_VALID
    from pipelines.stream.change_feed import KEY_OF, key_change

    post_minute = ("SELECT CAST(42 AS BIGINT) AS post_id, "
                   "CAST(TIMESTAMP '2024-08-12 23:47:00.000' AS TIMESTAMP(3)) AS window_start")
    presence = f"SELECT CAST(7 AS BIGINT) AS space_id, CAST({T0 + 59_999} AS BIGINT) AS event_time_ms"
    for output, select, record in (
        (POST_MINUTE_ROWS, post_minute, {"post_id": 42, "window_start": "2024-08-12 23:47:00.000"}),
        (PRESENCE_VALID, presence, {"space_id": 7, "event_time_ms": T0 + 59_999}),
    ):
        ((key,),) = rows(t_env, f"SELECT {job_sql.CHANGE_KEY} FROM ({job_sql.keyed_sql(output.name, select)})")
        assert key_change(output, key.encode()) == KEY_OF[output.name](record)
    assert key_change(POST_MINUTE_ROWS, None) is None and key_change(POST_MINUTE_ROWS, b"17") is None


@pytest.mark.parametrize("output", [o for o in OUTPUTS if o.wire == "RowBinary"], ids=lambda o: o.name)
def test_the_jobs_rowbinary_records_are_the_bytes_clickhouse_reads(t_env, tmp_path, output):
    """jvm/'s `clickhouse-rowbinary` format, through the sink options the job uses (`job_tables`), writes
    each row as pipelines.store.row_binary does (whose bytes are checked against ClickHouse's
    documentation in test_row_binary.py); a text of two bytes a character and a long one included."""
    rows = []
    for n in range(3):
        row = {}
        for field in output.fields:
            if field.clickhouse == "String":
                row[field.name] = f"{field.name}-é-{n}" + "x" * (200 * n)
            elif field.clickhouse == "DateTime":
                row[field.name] = 1723424400 + 60 * n
            else:
                row[field.name] = n + (2**40 if field.clickhouse == "UInt64" else 0)
        rows.append(row)

    def literal(field, value):
        if field.clickhouse == "DateTime":
            return f"TO_TIMESTAMP_LTZ({value * 1000}, 3)"
        return f"'{value}'" if isinstance(value, str) else f"CAST({value} AS {field.flink})"

    options = job_tables._wire_format(output)
    t_env.execute_sql(f"CREATE TEMPORARY TABLE rb_{output.name} ({job_tables._columns(output)}) WITH ("
                      f"'connector' = 'filesystem', 'path' = '{tmp_path}', "
                      + ", ".join(f"'{k}' = '{v}'" for k, v in options.items()) + ")")
    selects = " UNION ALL ".join(
        "SELECT " + ", ".join(f"CAST({literal(f, row[f.name])} AS {f.flink})" for f in output.fields) for row in rows)
    t_env.execute_sql(f"INSERT INTO rb_{output.name} {selects}").wait()
    parts = [p for p in sorted(tmp_path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    written = b"".join(p.read_bytes() for p in parts)
    # The file sink ends each record with a newline (Kafka's sink does not: a record is its bytes);
    # the union's rows may come in any order.
    expected = [row_binary.encode(output.fields, row) + b"\n" for row in rows]
    assert len(written) == sum(map(len, expected)) and all(written.count(record) == 1 for record in expected)
