"""Subject rollups agree exactly with the query-time figures, and stay right as posts arrive late."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipelines.repair import subject_repair
from pipelines.rollups import sketches, subject_rollups, subject_rows
from pipelines.rollups.subjects import conversation_posts, load_subjects
from pipelines.serve import figures_from_rollups, query
from pipelines.store.clickhouse import POST_MINUTE, POSTS, insert_rows
from tests.expectations import assert_same_figures
from tests.support import answers, module_namespace, poll
from tests.support import get_json as get

pytestmark = pytest.mark.integration

SCALE, SEED = 1000, 20240812
WINDOW = (datetime(2024, 8, 12, 23, 47, tzinfo=UTC), datetime(2024, 8, 13, 2, 47, tzinfo=UTC))
ODD = (datetime(2024, 8, 13, 0, 13, tzinfo=UTC), datetime(2024, 8, 13, 1, 29, tzinfo=UTC))
POST_MINUTE_COLUMNS = ("post_id", "window_start", "views", "impressions", "unique_viewers_sketch", "unique_viewers",
                       "version")
POSTS_COLUMNS = ("post_id", "author_id", "created_at", "reply_to", "quote_of", "links", "tags", "version")


subjects_namespace = module_namespace("subjects_")


@pytest.fixture(scope="module")
def night(subjects_namespace):
    """A 1:1000 night written straight into a namespace of this module's own (no Flink), rolled up."""
    from pipelines.reference.generator import build_night
    from pipelines.reference.night_tables import fill_night
    from pipelines.store.clickhouse import connect

    settings = subjects_namespace
    client = connect(settings)
    fill_night(client, build_night(SCALE, SEED))
    subject_rollups.refresh(client, settings)
    yield settings, client
    client.disconnect()


@pytest.fixture(scope="module")
def subject():
    return load_subjects()["space-2024-08-12"]


def test_attribution_is_stored_as_the_walk_over_all_posts_finds_it(night, subject):
    _, client = night
    about, created = conversation_posts(client, subject)
    stored = {pid for (pid,) in client.execute(
        "SELECT post_id FROM subject_posts FINAL WHERE subject_id = %(s)s", {"s": subject.id})}
    assert stored == about
    # The night's own 4,000 (another test of this module adds two posts after the night, at 03:10).
    assert len({p for p in about if created[p] < datetime(2024, 8, 13, 3, 0)}) == 4_000


@pytest.mark.parametrize("span", [WINDOW, ODD, query.ALL_TIME], ids=["published-window", "odd-minutes", "all-time"])
def test_subject_rollups_agree_exactly_with_the_query_time_figures(night, subject, span):
    _, client = night
    rolled = assert_same_figures(client, subject, *span)
    assert rolled.combined_views > 0


def test_the_published_window_reads_a_few_dozen_rollup_rows(night, subject):
    _, client = night
    rows = figures_from_rollups.subject_rollup_rows(client, subject, *WINDOW)
    # 13 minutes before 00:00, hours 00 and 01, 47 minutes of 02: never one row per post.
    grains = [r["grain"] for r in rows]
    assert (grains.count("minute"), grains.count("hour"), len(grains)) == (60, 2, 62)


def _minute_row(post_id: int, minute: datetime, viewers: list[int]) -> tuple:
    sketch = sketches.sketch_of(viewers)
    return (post_id, minute, len(viewers), 1, sketches.to_bytes(sketch), sketch.get_estimate(), 10**15)


def _post(post_id: int, created: datetime, reply_to: int) -> tuple:
    return (post_id, 99, created, reply_to, 0, [], [], 1)


def test_a_post_arriving_after_its_views_and_a_reply_to_it_arriving_first_are_counted(night, subject):
    settings, client = night
    about, created = conversation_posts(client, subject)
    # A reply to a reply: the parent is itself about the subject only through another post.
    parent = next(p for p in sorted(about) if created[p] < datetime(2024, 8, 13, 0, 0))
    late, reply_of_late = 900_000_001, 900_000_002
    # After the night's hours, which were rebuilt into post_hour (figures_from_posts.subject_figures reads
    # those hours from there): minute rows as the stream writes them.
    at = datetime(2024, 8, 13, 3, 10, tzinfo=UTC)
    after_night = (datetime(2024, 8, 13, 2, 30, tzinfo=UTC), datetime(2024, 8, 13, 3, 30, tzinfo=UTC))
    # The views of both, then the reply (whose parent nobody has seen yet).
    insert_rows(client, POST_MINUTE, POST_MINUTE_COLUMNS, [
        _minute_row(late, at, [11, 12, 13]), _minute_row(late, at + timedelta(minutes=5), [11, 14]),
        _minute_row(reply_of_late, at + timedelta(minutes=3), [15, 16, 17, 18])])
    insert_rows(client, POSTS, POSTS_COLUMNS, [_post(reply_of_late, at + timedelta(minutes=2), late)])
    subject_rollups.refresh(client, settings)
    before = assert_same_figures(client, subject, *query.ALL_TIME)
    assert_same_figures(client, subject, *after_night)
    # The post arrives after its views and after its reply.
    insert_rows(client, POSTS, POSTS_COLUMNS, [_post(late, at, parent)])
    subject_rollups.refresh(client, settings)
    after = assert_same_figures(client, subject, *query.ALL_TIME)
    assert after.posts_about == before.posts_about + 2
    assert after.views_of_posts_about == before.views_of_posts_about + 9
    assert_same_figures(client, subject, *after_night)
    assert_same_figures(client, subject, *WINDOW)


def test_a_refresh_with_nothing_new_changes_nothing(night, subject):
    settings, client = night
    subject_rollups.refresh(client, settings)
    before = figures_from_rollups.subject_rollup_figures(client, subject, *WINDOW)
    started = time.monotonic()
    reports = subject_rollups.refresh(client, settings)
    seconds = time.monotonic() - started
    after = figures_from_rollups.subject_rollup_figures(client, subject, *WINDOW)
    assert (after.combined_views, after.posts_about, after.unique_viewers) == (
        before.combined_views, before.posts_about, before.unique_viewers)
    assert [r.full for r in reports] == [False]
    assert seconds < 15, f"an idle refresh took {seconds:.1f} s"


def test_new_views_of_the_root_reach_the_rollup_in_one_refresh(night, subject):
    settings, client = night
    minute = datetime(2024, 8, 13, 3, 20, tzinfo=UTC)  # after the night's rebuilt hours: a minute of its own
    before = figures_from_rollups.subject_rollup_figures(client, subject, *query.ALL_TIME)
    insert_rows(client, POST_MINUTE, POST_MINUTE_COLUMNS, [_minute_row(subject.root_post_id, minute, [5, 6])])
    subject_rollups.refresh(client, settings)
    after = assert_same_figures(client, subject, *query.ALL_TIME)
    assert after.subject_views - before.subject_views == 2


def test_the_hourly_reconciliation_finds_a_wrong_minute_and_the_rebuild_mends_it(night, subject):
    from pipelines.store.clickhouse import SUBJECT_ROLLUP

    _, client = night
    hour = datetime(2024, 8, 13, 1, tzinfo=UTC)
    assert subject_repair.compare_hour(client, subject, hour).clean
    # A minute row gone wrong (as a lost refresh would leave it): a higher version, views off by one.
    (row,) = [r for r in subject_rows.existing_rows(client, subject, "minute", datetime(2024, 8, 13, 1, 30),
                                                   datetime(2024, 8, 13, 1, 31))]
    wrong = {**row, "subject_views": row["subject_views"] + 1, "version": row["version"] + 1}
    insert_rows(client, SUBJECT_ROLLUP, subject_rows.ROLLUP_COLUMNS,
                [tuple(wrong[c] for c in subject_rows.ROLLUP_COLUMNS)])
    drift = subject_repair.compare_hour(client, subject, hour)
    assert (drift.clean, drift.count_differences) == (False, 1), drift
    subject_repair.rebuild_hour(client, subject, hour)
    assert subject_repair.compare_hour(client, subject, hour).clean
    assert_same_figures(client, subject, *WINDOW)


# --- the API (viewcount serve) ----------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(settings, ttl_s: float = 2.0):
    """`viewcount serve` in a thread of this process, on a free loopback port; polled until it answers."""
    import threading

    import uvicorn

    from pipelines.serve.api import create_app

    # No per-client rate limit: these tests send bursts of 40 from one address on purpose (the
    # limit itself: tests/security/test_dashboards_abuse.py).
    app = create_app(replace(settings, api_rate_per_s=0), ttl_s=ttl_s)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    poll(lambda: answers(f"http://127.0.0.1:{port}/openapi.json"), 30, "the API answering", interval_s=0.05)
    return server, thread, f"http://127.0.0.1:{port}", app


@pytest.fixture(scope="module")
def api(night):
    settings, _ = night
    server, thread, base, app = start_server(settings)
    yield base, app
    server.should_exit = True
    thread.join(timeout=10)


PUBLISHED = "from=2024-08-12T19:47&to=2024-08-12T22:47"


def test_the_api_answers_the_published_window_as_the_rollups_do(api, night, subject):
    base, _ = api
    _, client = night
    status, headers, body = get(f"{base}/api/subjects/{subject.id}/figures?{PUBLISHED}")
    assert status == 200, body
    expected = figures_from_rollups.subject_rollup_figures(client, subject, *WINDOW)
    assert (body["subject_views"], body["posts_about"], body["views_of_posts_about"], body["combined_views"]) == (
        expected.subject_views, expected.posts_about, expected.views_of_posts_about, expected.combined_views)
    assert body["unique_viewers"]["lower"] <= body["unique_viewers"]["estimate"] <= body["unique_viewers"]["upper"]
    assert body["listeners"]["peak"] == expected.listeners.peak_listeners
    assert body["time_zone"] == "America/New_York" and body["from"].startswith("2024-08-12T19:47:00-04:00")
    assert "max-age" in headers["Cache-Control"] and headers["ETag"]


def test_series_listeners_top_posts_post_and_health(api, subject):
    base, _ = api
    status, _, series = get(f"{base}/api/subjects/{subject.id}/series?{PUBLISHED}&grain=minute")
    assert status == 200 and len(series["rows"]) == 180
    status, _, hours = get(f"{base}/api/subjects/{subject.id}/series?{PUBLISHED}&grain=hour")
    assert status == 200 and [r["window_start"][11:16] for r in hours["rows"]] == ["20:00", "21:00", "22:00"]
    status, _, listeners = get(f"{base}/api/subjects/{subject.id}/listeners?{PUBLISHED}")
    assert status == 200 and listeners["peak"] == max(r["listeners"] for r in listeners["minutes"])
    status, _, top = get(f"{base}/api/subjects/{subject.id}/top-posts?{PUBLISHED}&limit=5")
    assert status == 200 and len(top["posts"]) == 5 and subject.root_post_id in [p["post_id"] for p in top["posts"]]
    status, _, post = get(f"{base}/api/posts/{subject.root_post_id}")
    assert status == 200 and post["views"] >= 73_000
    status, _, health = get(f"{base}/api/health")
    assert status == 200 and health["subjects"][0]["data_until"].startswith("2024-08-13T0")
    assert health["subjects"][0]["behind_real_time_s"] > 0


def test_an_unchanged_answer_is_not_sent_again(api, subject):
    base, _ = api
    url = f"{base}/api/subjects/{subject.id}/figures?{PUBLISHED}"
    _, headers, _ = get(url)
    status, _, body = get(url, {"If-None-Match": headers["ETag"]})
    assert status == 304 and body is None


def test_identical_requests_at_once_share_one_computation(api, subject):
    from concurrent.futures import ThreadPoolExecutor

    base, app = api
    url = f"{base}/api/subjects/{subject.id}/figures?from=2024-08-12T20:00&to=2024-08-12T21:00"
    before = app.state.cache.computations
    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(lambda _: get(url), range(40)))
    assert {a[0] for a in answers} == {200}
    assert len({a[1]["ETag"] for a in answers}) == 1
    assert app.state.cache.computations - before == 1


@pytest.mark.parametrize(("path", "status", "parameter"), [
    ("/api/subjects/no-such-subject/figures", 404, "subject_id"),
    ("/api/subjects/space-2024-08-12/figures?from=2024-08-12T22:47&to=2024-08-12T19:47", 400, "to"),
    ("/api/subjects/space-2024-08-12/figures?from=2024-01-01T00:00&to=2024-08-12T19:47", 400, "from"),
    ("/api/subjects/space-2024-08-12/figures?from=2024-08-12T19:47", 400, "to"),
    ("/api/subjects/space-2024-08-12/figures?from=yesterday&to=2024-08-12T19:47", 400, "from"),
    ("/api/subjects/space-2024-08-12/figures?tz=Mars/Olympus", 400, "tz"),
    ("/api/subjects/space-2024-08-12/series?grain=week", 400, "grain"),
    ("/api/subjects/space-2024-08-12/top-posts?limit=100000", 400, "limit"),
    ("/api/posts/abc", 400, "post_id"),
], ids=["unknown-subject", "reversed", "huge", "half-range", "not-a-time", "bad-zone", "bad-grain", "limit",
        "non-integer-id"])
def test_bad_input_gets_a_json_error_naming_the_parameter(api, path, status, parameter):
    base, _ = api
    got, headers, body = get(base + path)
    assert (got, body["parameter"]) == (status, parameter), body
    assert headers["Content-Type"].startswith("application/json") and body["error"]


def test_a_clickhouse_outage_is_a_503_with_retry_after(stack_settings):
    # A real refused connection: nothing listens on the port this settings object points at.
    target = stack_settings.clickhouse
    down = replace(stack_settings, clickhouse_url=(
        f"clickhouse://{target.user}:{target.password}@127.0.0.1:{_free_port()}/{target.database}"))
    server, thread, base, _ = start_server(down)
    try:
        status, headers, body = get(f"{base}/api/subjects/space-2024-08-12/figures")
        assert status == 503 and int(headers["Retry-After"]) > 0
        assert "unavailable" in body["error"] and "Traceback" not in str(body)
        status, _, _ = get(f"{base}/api/health")
        assert status == 503
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- the live page, in a real browser -----------------------------------------------------------

# The picture in docs/ is refreshed only on request (VIEWCOUNT_DOCS_SCREENSHOT=1): a test run
# leaves the tracked files as they were.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard-live.png"


def _open_live_page(driver, url: str) -> None:
    """Load the live page and wait until its first figures are on it."""
    driver.get(url)
    poll(lambda: driver.execute_script("return document.body.dataset.loaded || ''"), 30,
         "the live page loaded", interval_s=0.1)


@pytest.mark.browser
def test_the_live_page_shows_the_apis_figures(api, subject, tmp_path):
    """Debian's chromium (headless) loads `/` and the counters on the page equal the API's."""
    import shutil

    from pipelines.serve.api import CHART_DIR

    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("chromium and chromium-driver are not installed: run `make browser` (apt)")
    if not CHART_DIR.is_dir():
        pytest.fail("the chart library is not installed: run `make web` (npm)")
    from pipelines.serve.browser import headless_chromium

    base, _ = api
    driver = headless_chromium(1400, 1000)
    try:
        _open_live_page(driver, f"{base}/?{PUBLISHED}")
        _, _, figures = get(f"{base}/api/subjects/{subject.id}/figures?{PUBLISHED}")
        _, _, listeners = get(f"{base}/api/subjects/{subject.id}/listeners?{PUBLISHED}")

        def shown(element_id: str) -> int:
            element = driver.find_element("id", element_id)
            assert element.text.replace(",", "") == element.get_attribute("data-value")
            return int(element.get_attribute("data-value"))

        assert shown("subject_views") == figures["subject_views"] == 73_000
        assert shown("posts_about") == figures["posts_about"]
        assert shown("views_of_posts_about") == figures["views_of_posts_about"]
        assert shown("combined_views") == figures["combined_views"]
        assert shown("unique_viewers") == figures["unique_viewers"]["estimate"]
        assert shown("listeners_peak") == figures["listeners"]["peak"]
        assert shown("listeners_now") == listeners["now"]
        assert driver.find_element("id", "zone").text == "America/New_York"
        assert "behind real time" in driver.find_element("id", "freshness").text
        assert driver.execute_script("return typeof Chart") == "function"  # from node_modules, not a CDN
        screenshot = DOCS_SCREENSHOT if os.environ.get("VIEWCOUNT_DOCS_SCREENSHOT") == "1" else (
            tmp_path / "dashboard-live.png")
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 0
    finally:
        driver.quit()


@pytest.mark.browser
def test_the_live_page_never_asks_for_all_time(api, subject):
    """Opened without a range, the page asks its series for the API's bounded default and every
    other figure for exactly that range: no request of it reads all of history."""
    import shutil
    from urllib.parse import parse_qs, urlparse

    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("chromium and chromium-driver are not installed: run `make browser` (apt)")
    from pipelines.serve.browser import headless_chromium

    base, _ = api
    driver = headless_chromium(1400, 1000)
    try:
        _open_live_page(driver, f"{base}/")
        asked = [urlparse(u) for u in driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)") if "/api/subjects/" in u]
    finally:
        driver.quit()
    series = [u for u in asked if u.path.endswith("/series")]
    ranged = [u for u in asked if u.path.endswith(("/figures", "/listeners"))]
    assert series and ranged
    _, _, answer = get(f"{base}{series[0].path}?{series[0].query}")
    for url in ranged:
        query = parse_qs(url.query)
        assert (query["from"], query["to"]) == ([answer["from"]], [answer["to"]]), url.geturl()
    start, end = datetime.fromisoformat(answer["from"]), datetime.fromisoformat(answer["to"])
    assert end - start == timedelta(hours=24), answer
