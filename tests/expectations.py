"""Checks shared by the end-to-end tests: what the stream wrote against the night's ground truth."""

from __future__ import annotations

from pipelines.reference import night


def assert_post_minutes_match_truth(clickhouse, truth) -> None:
    """Every post-minute row equals the ground truth exactly, except where late events were
    delivered: a late event may or may not have beaten the watermark, and is never counted twice.
    No row exists that the night does not have."""
    stream = {
        (post_id, str(window_start)): (views, impressions)
        for post_id, window_start, views, impressions in clickhouse.execute(
            "SELECT post_id, window_start, views, impressions FROM post_minute FINAL")
    }
    exact = 0
    for minute in truth.post_minutes:
        got = stream.pop((minute.post_id, minute.window_start), (0, 0))
        if not minute.has_late_events:
            assert got == (minute.views, minute.impressions), (minute.post_id, minute.window_start)
            exact += 1
        else:
            assert minute.views - minute.late_views <= got[0] <= minute.views, (minute.post_id, minute.window_start)
            assert minute.impressions - minute.late_impressions <= got[1] <= minute.impressions, (
                minute.post_id, minute.window_start)
    assert stream == {}, "rows in ClickHouse that the night does not have"
    assert exact > 0.95 * len(truth.post_minutes)


def assert_headline_matches_truth(figures, truth) -> None:
    """The night's published figures scaled down, exact (at 1:1000: 73K · 4K · 998K · 1.071M), and
    unique viewers and listeners within their sketch bounds; the listener curve and its peak exact."""
    assert figures.subject_views == truth.subject_views == night.PUBLISHED_SUBJECT_VIEWS // truth.scale
    assert figures.posts_about == truth.related_posts == night.PUBLISHED_RELATED_POSTS // truth.scale
    assert figures.views_of_posts_about == truth.related_views == night.PUBLISHED_RELATED_VIEWS // truth.scale
    assert figures.combined_views == truth.combined_views == (
        (night.PUBLISHED_SUBJECT_VIEWS + night.PUBLISHED_RELATED_VIEWS) // truth.scale)
    assert_viewers_and_listeners_match_truth(figures, truth)


def assert_viewers_and_listeners_match_truth(figures, truth) -> None:
    """Unique viewers and listeners within their sketch bounds; the listener curve and its peak exact."""
    assert figures.unique_viewers_lower <= truth.conversation_unique_viewers <= figures.unique_viewers_upper
    listeners = figures.listeners
    assert listeners.peak_listeners == truth.peak_listeners
    assert listeners.peak_minute.strftime("%Y-%m-%d %H:%M:%S") == truth.peak_minute
    assert listeners.minutes.listeners.tolist() == truth.listeners_per_minute
    assert listeners.unique_listeners_lower <= truth.unique_listeners <= listeners.unique_listeners_upper


def assert_same_figures(client, subject, start, end):
    """The subject rollups give exactly the query-time figures (pipelines.serve.figures_from_posts.subject_figures),
    unique viewers and listeners within each other's sketch bounds; returns the rolled-up ones."""
    from pipelines.serve import figures_from_posts, figures_from_rollups

    reference = figures_from_posts.subject_figures(client, subject, start, end)
    rolled = figures_from_rollups.subject_rollup_figures(client, subject, start, end)
    return assert_figures_agree(reference, rolled)


def assert_figures_agree(reference, rolled):
    """Rolled-up figures against query-time ones (taken at the same moment): counts exact, unique
    viewers and listeners within each other's sketch bounds, the listener peak exact."""
    for name in ("subject_views", "posts_about", "views_of_posts_about", "combined_views"):
        assert getattr(rolled, name) == getattr(reference, name), name
    assert reference.unique_viewers_lower <= rolled.unique_viewers <= reference.unique_viewers_upper
    assert rolled.unique_viewers_lower <= reference.unique_viewers <= rolled.unique_viewers_upper
    assert rolled.listeners.peak_listeners == reference.listeners.peak_listeners
    assert rolled.listeners.peak_minute == reference.listeners.peak_minute
    assert (reference.listeners.unique_listeners_lower <= rolled.listeners.unique_listeners
            <= reference.listeners.unique_listeners_upper)
    return rolled
