"""Erasure on the real ClickHouse 18.16, no Flink: a viewer's rows leave every table, the hours they
were in are rebuilt so that no sketch counts them, and neither a rebuild of the archive nor their
rows arriving again (a replay of the source topics) brings them back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipelines.repair import backfill, erasure, ledger
from pipelines.rollups import sketches
from pipelines.store import pseudonyms
from pipelines.store.clickhouse import DEAD_LETTERS, EVENTS_RAW, SPACE_PRESENCE, connect, insert_rows
from pipelines.store.tables import EVENTS_RAW_COLUMNS, TABLE_COLUMNS

pytestmark = pytest.mark.integration
ROOT, OTHER_POST, SPACE = 1, 99, 1  # config/subjects.toml: the tracked subject's root post and Space
ERASED, ALSO_ERASED = 7, 8
VIEWERS = range(1, 31)
HOURS = [datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=h) for h in (5, 4)]


def _views(hour: datetime, viewers, post_id: int, tag: str = "") -> list[tuple]:
    rows = []
    for i, viewer in enumerate(viewers):
        at = hour + timedelta(minutes=i % 50, seconds=viewer)
        rows.append(("view", f"{tag}{post_id}-{hour:%H}-{viewer}", at.replace(tzinfo=None), int(at.timestamp() * 1000),
                     post_id, 3, viewer, "home", "web", ""))
    return rows


def _presence(hour: datetime, listeners) -> list[tuple]:
    at = hour + timedelta(minutes=58)  # a session running into the next hour (heartbeat timeout)
    return [(SPACE, listener, at.replace(tzinfo=None), int(at.timestamp() * 1000), "join", f"p-{hour:%H}-{listener}")
            for listener in listeners]


def _seed(client) -> None:
    for hour in HOURS:
        insert_rows(client, EVENTS_RAW, EVENTS_RAW_COLUMNS,
                    _views(hour, VIEWERS, ROOT) + _views(hour, VIEWERS[::3], OTHER_POST))
    insert_rows(client, SPACE_PRESENCE, TABLE_COLUMNS[SPACE_PRESENCE][:6], _presence(HOURS[0], VIEWERS))
    insert_rows(client, DEAD_LETTERS, ("source_topic", "source_partition", "source_offset", "reason", "payload"), [
        ("views", 0, 1, "event_time: not a number", f'{{"viewer_id": "{ERASED}", "event_time": "x"}}'),
        ("presence", 0, 2, "malformed JSON", f'{{"listener_id":{ERASED},'),
        ("views", 0, 3, "event_time: not a number", '{"viewer_id": 70, "event_time": "x"}')])
    ledger.note_hours(client, HOURS, "test")
    ledger.repair(client, scan=False)


def _naming(client, viewer: int) -> dict[str, int]:
    """Rows of every table that hold this viewer, by table."""
    found = {
        EVENTS_RAW: client.execute("SELECT count() FROM events_raw WHERE viewer_id = %(v)s", {"v": viewer})[0][0],
        SPACE_PRESENCE: client.execute("SELECT count() FROM space_presence WHERE listener_id = %(v)s",
                                       {"v": viewer})[0][0],
        DEAD_LETTERS: client.execute("SELECT count() FROM dead_letters WHERE match(payload, %(p)s)",
                                     {"p": f'_id"\\s*:\\s*"?{viewer}[^0-9]'})[0][0],
    }
    return {table: n for table, n in found.items() if n}


def _sketches(client, table: str, time_column: str, post_id: int, hour: datetime) -> dict[datetime, bytes]:
    rows = client.execute(
        f"SELECT {time_column}, unique_viewers_sketch FROM {table} FINAL WHERE post_id = %(p)s "
        f"AND {time_column} >= %(f)s AND {time_column} < %(t)s",
        {"p": post_id, "f": hour.replace(tzinfo=None), "t": (hour + timedelta(hours=1)).replace(tzinfo=None)},
        settings={"strings_as_bytes": True})
    return {backfill.as_utc(w): s for w, s in rows}


def _expected_minute_sketches(hour: datetime, viewers, without: set[int]) -> dict[datetime, bytes]:
    minutes: dict[datetime, set[int]] = {}
    for i, viewer in enumerate(viewers):
        at = hour + timedelta(minutes=i % 50, seconds=viewer)
        minutes.setdefault(at.replace(second=0), set()).add(viewer)
    return {m: sketches.to_bytes(sketches.sketch_of(ids - without)) for m, ids in minutes.items() if ids - without}


def _assert_sketches_without(client, without: set[int]) -> None:
    for hour in HOURS:
        for post_id, viewers in ((ROOT, VIEWERS), (OTHER_POST, VIEWERS[::3])):
            assert _sketches(client, "post_minute", "window_start", post_id, hour) == _expected_minute_sketches(
                hour, viewers, without), f"post {post_id}, {hour:%H}:00: a minute's sketch is not that of the others"
            assert _sketches(client, "post_hour", "hour_start", post_id, hour) == {
                hour: sketches.to_bytes(sketches.sketch_of(set(viewers) - without))}
    # The subject's listeners: the hour of the joins and the next (sessions run on for a heartbeat timeout).
    for hour in (HOURS[0], HOURS[0] + timedelta(hours=1)):
        ((listeners,),) = client.execute(
            "SELECT unique_listeners_sketch FROM subject_rollup FINAL WHERE grain = 'hour' AND window_start = %(h)s",
            {"h": hour.replace(tzinfo=None)}, settings={"strings_as_bytes": True})
        # A union of minute sketches: its bytes are not those of one sketch built from the set, but
        # at 30 listeners its estimate is exact, so it says who is in it.
        assert round(sketches.from_bytes(listeners).get_estimate()) == len(set(VIEWERS) - without), (
            f"listeners {hour:%H}:00")
    # The subject's viewers of the hour (root only: no post is about it here).
    for hour in HOURS:
        ((viewers,),) = client.execute(
            "SELECT unique_viewers_sketch FROM subject_rollup FINAL WHERE grain = 'hour' AND window_start = %(h)s",
            {"h": hour.replace(tzinfo=None)}, settings={"strings_as_bytes": True})
        assert round(sketches.from_bytes(viewers).get_estimate()) == len(set(VIEWERS) - without), f"{hour:%H}:00"


def test_an_erased_viewer_is_in_no_table_and_no_sketch_and_a_rebuild_or_replay_keeps_it_so(own_stack):
    client = connect(own_stack)
    _seed(client)
    assert set(_naming(client, ERASED)) == {EVENTS_RAW, SPACE_PRESENCE, DEAD_LETTERS}
    _assert_sketches_without(client, set())  # the check sees the viewer before the erasure

    report = erasure.erase(client, [ERASED], requested_by="ticket-22")

    assert _naming(client, ERASED) == {}
    assert report.rows == {EVENTS_RAW: 4, SPACE_PRESENCE: 1, DEAD_LETTERS: 2}
    # The hours of its views, and of its listening (a session runs on into the next hour).
    touched = sorted({*HOURS, HOURS[0] + timedelta(hours=1)})
    assert [backfill.as_utc(h) for h in report.hours] == touched
    _assert_sketches_without(client, {ERASED})
    assert _naming(client, 70) == {DEAD_LETTERS: 1}, "a dead letter of another viewer went too"
    # The request is recorded; the ledger keeps the viewer's pseudonym, never the id.
    ((by, viewers, hours, events, presence, dead),) = client.execute(
        "SELECT requested_by, viewers, hours, events_raw_rows, space_presence_rows, dead_letters_rows "
        "FROM erasure_requests")
    assert (by, viewers, len(hours), events, presence, dead) == ("ticket-22", 1, len(touched), 4, 1, 2)
    key = pseudonyms.read_key(client)
    assert client.execute("SELECT viewer_key FROM erased_viewers") == [(pseudonyms.pseudonym(key, ERASED),)]

    # A rebuild from the archive after the viewer's events came back (a replay of the source
    # topics) does not count them...
    insert_rows(client, EVENTS_RAW, EVENTS_RAW_COLUMNS, _views(HOURS[0], [ERASED], ROOT))
    backfill.rebuild_hour(client, HOURS[0])
    assert _sketches(client, "post_hour", "hour_start", ROOT, HOURS[0]) == {
        HOURS[0]: sketches.to_bytes(sketches.sketch_of(set(VIEWERS) - {ERASED}))}
    # ... and the sweep erases the returned rows again.
    swept = erasure.sweep(client)
    assert swept is not None and swept.rows[EVENTS_RAW] == 1
    assert _naming(client, ERASED) == {}
    _assert_sketches_without(client, {ERASED})
    assert erasure.sweep(client) is None, "the sweep found the viewer again"


def test_the_dagster_job_erases_a_batch_from_a_file_it_then_deletes(own_stack, tmp_path):
    from dagster_project.definitions import defs
    from dagster_project.resources import ClickHouseResource

    client = connect(own_stack)
    _seed(client)
    ids = tmp_path / "erase.txt"
    ids.write_text(f"{ERASED}\n{ALSO_ERASED}\n")
    result = defs.resolve_job_def("erase_viewers").execute_in_process(
        resources={"clickhouse": ClickHouseResource(url=own_stack.clickhouse_url)},
        run_config={"ops": {"erase_viewers_op": {"config": {"ids_file": str(ids), "requested_by": "batch-1"}}}})
    assert result.success
    assert _naming(client, ERASED) == {} and _naming(client, ALSO_ERASED) == {}
    assert not ids.exists()
    _assert_sketches_without(client, {ERASED, ALSO_ERASED})
    assert client.execute("SELECT requested_by, viewers FROM erasure_requests") == [("batch-1", 2)]
