"""Pseudonymous analysis on the real ClickHouse 18.16 (pipelines/store/analysis.py, docs/access.md):
the analyst counts and joins viewers and listeners by pseudonym, never by id; no statement the
analyst can read holds the key; the analyst SQL of sql/queries answers as the writer's does."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from clickhouse_driver import errors as ch_errors

from pipelines.config import REPO_ROOT
from pipelines.store import analysis
from pipelines.store.clickhouse import connect, connect_analyst, insert_rows
from pipelines.store.pseudonyms import pseudonym, read_key
from pipelines.store.tables import (
    DEAD_LETTERS,
    EVENTS_RAW,
    POST_MINUTE,
    POST_SURFACE_MINUTE,
    POSTS,
    SPACE_PRESENCE,
    TABLE_COLUMNS,
)
from tests.support import module_namespace

pytestmark = pytest.mark.integration

ACCESS_DENIED = 291
READONLY = 164
START = datetime(2024, 8, 13, 0, 0, tzinfo=UTC)
SPACE = 9
POSTS_OF_NIGHT = range(1, 6)


def _events(rng: random.Random) -> list[tuple]:
    rows = []
    for n in range(400):
        at = START + timedelta(seconds=rng.randrange(3 * 3600))
        post = rng.choice(POSTS_OF_NIGHT)
        rows.append(("view", f"pseudo-{n}", at, int(at.timestamp() * 1000), post, 100 + post,
                     rng.randrange(1, 60), rng.choice(["home", "search"]), "web", ""))
    return rows


def _presence(rng: random.Random) -> list[tuple]:
    rows = []
    for listener in range(30, 90):
        joined = START + timedelta(seconds=rng.randrange(3600))
        for n, (action, at) in enumerate((("join", joined), ("leave", joined + timedelta(minutes=20)))):
            rows.append((SPACE, listener, at, int(at.timestamp() * 1000), action, f"presence-{listener}-{n}"))
    return rows


pseudo_namespace = module_namespace("pseudo_")


@pytest.fixture(scope="module")
def night(pseudo_namespace):
    """A namespace of our own with a small night in every table the analyst queries (the session's
    shared database stays untouched), its readers allowed; removed at the end, behind the tests."""
    settings = pseudo_namespace
    writer = connect(settings)
    rng = random.Random(22)
    events, presence = _events(rng), _presence(rng)
    insert_rows(writer, EVENTS_RAW, TABLE_COLUMNS[EVENTS_RAW], events)
    insert_rows(writer, EVENTS_RAW, TABLE_COLUMNS[EVENTS_RAW], events[:5])  # delivered twice: one event each
    insert_rows(writer, SPACE_PRESENCE, TABLE_COLUMNS[SPACE_PRESENCE], presence)
    insert_rows(writer, DEAD_LETTERS, ("source_topic", "source_partition", "source_offset", "reason", "payload"),
                [("views", 0, n, "viewer_id is not an integer", f'{{"viewer_id": "name-{n}", "post_id": 1}}')
                 for n in range(3)])
    insert_rows(writer, POSTS, TABLE_COLUMNS[POSTS],
                [(p, 100 + p, START, 1 if p > 1 else 0, 0, [], [], 1) for p in POSTS_OF_NIGHT])
    per_minute = Counter((post, at.replace(second=0)) for _, _, at, _, post, *_ in events)
    insert_rows(writer, POST_MINUTE, TABLE_COLUMNS[POST_MINUTE],
                [(post, minute, views, 0, b"", float(views), 1) for (post, minute), views in per_minute.items()])
    insert_rows(writer, POST_SURFACE_MINUTE, TABLE_COLUMNS[POST_SURFACE_MINUTE],
                [(post, minute, "home", "", views, 0, 1) for (post, minute), views in per_minute.items()])
    key = read_key(writer)
    assert key, "the migration made the database's pseudonym key"
    yield settings, key, events, presence
    writer.disconnect()


def test_the_analyst_counts_and_joins_viewers_by_pseudonym_only(night):
    settings, key, events, presence = night
    analyst = connect_analyst(settings)
    viewers = Counter(row[6] for row in events)  # each event once: the analyst's rows are deduplicated
    listeners = {row[1] for row in presence}
    seen = dict(analyst.execute("SELECT viewer_id, count() FROM events_raw GROUP BY viewer_id"))
    assert seen == {pseudonym(key, viewer): n for viewer, n in viewers.items()}
    assert not set(seen) & set(viewers), "no viewer id shows through"
    one = sorted(viewers)[0]
    assert analyst.execute("SELECT count() FROM events_raw WHERE viewer_id = %(p)s",
                           {"p": pseudonym(key, one)}) == [(viewers[one],)], "a viewer is found by pseudonym"
    assert dict(analyst.execute("SELECT listener_id, count() FROM space_presence GROUP BY listener_id")) == \
        {pseudonym(key, listener): 2 for listener in listeners}
    # Viewers who also listened: the same person has the same pseudonym in both tables.
    assert analyst.execute("SELECT uniqExact(viewer_id) FROM events_raw WHERE viewer_id IN "
                           "(SELECT listener_id FROM space_presence)") == [(len(set(viewers) & listeners),)]
    # A subquery names a table without its database: it resolves in the analyst's database.
    replies = sum(1 for row in events if row[4] > 1)
    assert analyst.execute("SELECT count() FROM events_raw WHERE post_id IN "
                           "(SELECT post_id FROM posts FINAL WHERE reply_to = 1)") == [(replies,)]


def test_dead_letters_show_the_analyst_their_reason_and_size_not_their_payload(night):
    settings, *_ = night
    analyst = connect_analyst(settings)
    columns = [name for name, *_ in analyst.execute("DESCRIBE TABLE dead_letters")]
    assert "payload" not in columns and "payload_bytes" in columns
    writer = connect(settings)
    assert sorted(analyst.execute("SELECT reason, payload_bytes FROM dead_letters")) == \
        sorted((reason, len(payload.encode())) for reason, payload in
               writer.execute("SELECT reason, payload FROM dead_letters"))


def test_no_statement_the_analyst_can_read_holds_the_key(night):
    settings, key, *_ = night
    analyst = connect_analyst(settings)
    target = settings.clickhouse
    texts = [text for (text,) in analyst.execute("SELECT create_table_query FROM system.tables")]
    texts += [analyst.execute(f"SHOW CREATE TABLE {name}")[0][0] for (name,) in analyst.execute("SHOW TABLES")]
    texts += [repr(row) for row in analyst.execute("SELECT * FROM system.clusters")]
    assert len(texts) > 20 and not [text for text in texts if key in text]
    private = [f"{target.private_database}.{name}" for (name,) in connect(settings).execute(
        "SELECT name FROM system.tables WHERE database = %(d)s", {"d": target.private_database})]
    assert len(private) > 10  # the key, the views that read it, the read-through views' sources
    for table in (*private, f"{target.database}.events_raw", f"{target.database}.pseudonym_key"):
        with pytest.raises(ch_errors.ServerException) as refused:
            analyst.execute(f"SELECT count() FROM {table}")
        assert refused.value.code == ACCESS_DENIED, table
    with pytest.raises(ch_errors.ServerException) as refused:  # the cluster, named by hand
        analyst.execute(f"SELECT count() FROM remote('{target.host}:{target.port}', {target.database}.events_raw)")
    assert refused.value.code == READONLY


def test_the_analyst_sql_answers_as_the_writers(night):
    """Every file of sql/queries, as the analyst on its database and as the writer on the project's:
    the same rows, listeners compared through their pseudonyms."""
    settings, key, *_ = night
    analyst, writer = connect_analyst(settings), connect(settings)
    end = START + timedelta(hours=3)
    params = {"from": START, "to": end, "hour_from": START, "hour_to": end, "day_from": START, "day_to": START,
              "post_id": 1, "root_post_id": 1, "space_id": SPACE, "subject_id": "space-pseudo", "grain": "minute",
              "limit": 10}
    external = [{"name": "conversation_posts", "structure": [("post_id", "UInt64")],
                 "data": [{"post_id": p} for p in POSTS_OF_NIGHT]}]
    answered = 0
    for path in sorted((REPO_ROOT / "sql" / "queries").glob("*.sql")):
        sql = path.read_text()
        kwargs = {"external_tables": external} if "conversation_posts" in sql else {}
        expected = writer.execute(sql, params, **kwargs)
        if path.name == "space_presence.sql":
            expected = sorted((pseudonym(key, listener), *rest) for listener, *rest in expected)
        got = analyst.execute(sql, params, **kwargs)
        assert sorted(got) == sorted(expected), path.name
        answered += bool(got)
    assert answered >= 8, "most queries found rows"


def test_a_changed_table_is_made_again_for_the_analyst(night):
    settings, *_ = night
    writer = connect(settings)
    database = settings.clickhouse.database
    assert analysis.ensure(writer, database) == [], "nothing to do twice"
    writer.execute("ALTER TABLE events_raw ADD COLUMN region String DEFAULT ''")
    try:
        assert analysis.ensure(writer, database) == [EVENTS_RAW]
        analyst = connect_analyst(settings)
        assert "region" in [name for name, *_ in analyst.execute("DESCRIBE TABLE events_raw")]
        assert analyst.execute("SELECT count() FROM events_raw WHERE region = ''") == \
            writer.execute("SELECT count() FROM events_raw FINAL")
    finally:
        writer.execute("ALTER TABLE events_raw DROP COLUMN region")
        analysis.ensure(writer, database)
