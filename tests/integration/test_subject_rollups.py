"""Subject rollups agree exactly with the query-time figures, and stay right as posts arrive late."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from pipelines import query, sketches, subject_rollups
from pipelines.clickhouse import POST_MINUTE, POSTS, insert_rows
from pipelines.subjects import load_subjects

pytestmark = pytest.mark.integration

SCALE, SEED = 1000, 20240812
WINDOW = (datetime(2024, 8, 12, 23, 47, tzinfo=UTC), datetime(2024, 8, 13, 2, 47, tzinfo=UTC))
ODD = (datetime(2024, 8, 13, 0, 13, tzinfo=UTC), datetime(2024, 8, 13, 1, 29, tzinfo=UTC))
POST_MINUTE_COLUMNS = ("post_id", "window_start", "views", "impressions", "unique_viewers_sketch", "unique_viewers",
                       "version")
POSTS_COLUMNS = ("post_id", "author_id", "created_at", "reply_to", "quote_of", "links", "tags", "version")


@pytest.fixture(scope="module")
def night(stack_settings, session_tag):
    """A 1:1000 night written straight into a database of this module's own (no Flink), rolled up."""
    from pipelines.clickhouse import connect
    from pipelines.generator import build_night
    from pipelines.migrate import apply_migrations
    from pipelines.night_tables import fill_night

    target = stack_settings.clickhouse
    database = f"viewcount_subjects_{session_tag}"
    settings = replace(stack_settings, clickhouse_url=(
        f"clickhouse://{target.user}:{target.password}@{target.host}:{target.port}/{database}"))
    admin = connect(settings, database="default")
    admin.execute(f"DROP DATABASE IF EXISTS {database}")
    apply_migrations(admin, database)
    client = connect(settings)
    fill_night(client, build_night(SCALE, SEED))
    subject_rollups.refresh(client, settings)
    yield settings, client
    admin.execute(f"DROP DATABASE IF EXISTS {database}")


@pytest.fixture(scope="module")
def subject():
    return load_subjects()["space-2024-08-12"]


def assert_same_figures(client, subject, start, end):
    reference = query.subject_figures(client, subject, start, end)
    rolled = query.subject_rollup_figures(client, subject, start, end)
    for name in ("subject_views", "posts_about", "views_of_posts_about", "combined_views"):
        assert getattr(rolled, name) == getattr(reference, name), name
    assert reference.unique_viewers_lower <= rolled.unique_viewers <= reference.unique_viewers_upper
    assert rolled.unique_viewers_lower <= reference.unique_viewers <= rolled.unique_viewers_upper
    assert rolled.listeners.peak_listeners == reference.listeners.peak_listeners
    assert rolled.listeners.peak_minute == reference.listeners.peak_minute
    assert (reference.listeners.unique_listeners_lower <= rolled.listeners.unique_listeners
            <= reference.listeners.unique_listeners_upper)
    return rolled


def test_attribution_is_stored_as_the_walk_over_all_posts_finds_it(night, subject):
    _, client = night
    about, _ = query.conversation_posts(client, subject)
    stored = {pid for (pid,) in client.execute(
        "SELECT post_id FROM subject_posts FINAL WHERE subject_id = %(s)s", {"s": subject.id})}
    assert stored == about and len(about) > 4_000


@pytest.mark.parametrize("span", [WINDOW, ODD, query.ALL_TIME], ids=["published-window", "odd-minutes", "all-time"])
def test_subject_rollups_agree_exactly_with_the_query_time_figures(night, subject, span):
    _, client = night
    rolled = assert_same_figures(client, subject, *span)
    assert rolled.combined_views > 0


def test_the_published_window_reads_a_few_dozen_rollup_rows(night, subject):
    _, client = night
    rows = query.subject_rollup_rows(client, subject, *WINDOW)
    # 13 minutes before 00:00, hours 00 and 01, 47 minutes of 02: never one row per post.
    assert sorted(rows.grain.value_counts().items()) == [("hour", 2), ("minute", 60)]


def _minute_row(post_id: int, minute: datetime, viewers: list[int]) -> tuple:
    sketch = sketches.sketch_of(viewers)
    return (post_id, minute, len(viewers), 1, sketches.to_bytes(sketch), sketch.get_estimate(), 10**15)


def _post(post_id: int, created: datetime, reply_to: int) -> tuple:
    return (post_id, 99, created, reply_to, 0, [], [], 1)


def test_a_post_arriving_after_its_views_and_a_reply_to_it_arriving_first_are_counted(night, subject):
    settings, client = night
    about, created = query.conversation_posts(client, subject)
    # A reply to a reply: the parent is itself about the subject only through another post.
    parent = next(p for p in sorted(about) if created[p] < datetime(2024, 8, 13, 0, 0))
    late, reply_of_late = 900_000_001, 900_000_002
    at = datetime(2024, 8, 13, 0, 30, tzinfo=UTC)
    # The views of both, then the reply (whose parent nobody has seen yet).
    insert_rows(client, POST_MINUTE, POST_MINUTE_COLUMNS, [
        _minute_row(late, at, [11, 12, 13]), _minute_row(late, at + timedelta(minutes=5), [11, 14]),
        _minute_row(reply_of_late, at + timedelta(minutes=3), [15, 16, 17, 18])])
    insert_rows(client, POSTS, POSTS_COLUMNS, [_post(reply_of_late, at + timedelta(minutes=2), late)])
    subject_rollups.refresh(client, settings)
    before = assert_same_figures(client, subject, *WINDOW)
    # The post arrives after its views and after its reply.
    insert_rows(client, POSTS, POSTS_COLUMNS, [_post(late, at, parent)])
    subject_rollups.refresh(client, settings)
    after = assert_same_figures(client, subject, *WINDOW)
    assert after.posts_about == before.posts_about + 2
    assert after.views_of_posts_about == before.views_of_posts_about + 9
    assert_same_figures(client, subject, *ODD)
    assert_same_figures(client, subject, *query.ALL_TIME)


def test_a_refresh_with_nothing_new_changes_nothing(night, subject):
    settings, client = night
    subject_rollups.refresh(client, settings)
    before = query.subject_rollup_figures(client, subject, *WINDOW)
    started = time.monotonic()
    reports = subject_rollups.refresh(client, settings)
    seconds = time.monotonic() - started
    after = query.subject_rollup_figures(client, subject, *WINDOW)
    assert (after.combined_views, after.posts_about, after.unique_viewers) == (
        before.combined_views, before.posts_about, before.unique_viewers)
    assert [r.full for r in reports] == [False]
    assert seconds < 15, f"an idle refresh took {seconds:.1f} s"


def test_new_views_of_the_root_reach_the_rollup_in_one_refresh(night, subject):
    settings, client = night
    minute = datetime(2024, 8, 13, 2, 50, tzinfo=UTC)  # after the night: a minute of its own
    before = query.subject_rollup_figures(client, subject, *query.ALL_TIME)
    insert_rows(client, POST_MINUTE, POST_MINUTE_COLUMNS, [_minute_row(subject.root_post_id, minute, [5, 6])])
    subject_rollups.refresh(client, settings)
    after = assert_same_figures(client, subject, *query.ALL_TIME)
    assert after.subject_views - before.subject_views == 2
