"""The reference night (X Space, 12 Aug 2024) simulated at any scale, as arrays of events.

Published: 73M views of the Space's post, 4M posts about it, 998M views of those, in the three
hours 23:47-02:47 UTC, after a flood of traffic delayed the start by 40-45 minutes. At 1:N the
counts are the published ones divided by N (integer division), exactly. On top: impressions
(interactions) on a fraction of views, duplicate deliveries of the same event, arrival up to
5 s out of order, and a few events delivered minutes late. Arrays (numpy) hold the night in
about 40 bytes an event, so 1:100 (about 11M records) fits comfortably in memory.
Its events as the schemas' payloads: `pipelines.reference.night_events`; its exact answers:
`pipelines.reference.ground_truth`.
`pipelines.reference.producer` sends a night to Kafka; `pipelines.reference.generator.generate_night` does both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from pipelines.ingest import schemas

NIGHT_START = datetime(2024, 8, 12, 23, 47, tzinfo=UTC)
NIGHT_START_MS = int(NIGHT_START.timestamp() * 1000)
NIGHT_MINUTES = 180
NIGHT_END_MS = NIGHT_START_MS + NIGHT_MINUTES * 60_000
PUBLISHED_SUBJECT_VIEWS = 73_000_000
PUBLISHED_RELATED_POSTS = 4_000_000
PUBLISHED_RELATED_VIEWS = 998_000_000
FLOOD_DELAY_MINUTES = 42

SUBJECT_POST_ID = 1
HOST_AUTHOR_ID = 1
TRACKED_TAG = "spaces"
IMPRESSION_RATE = 0.03
DUPLICATE_RATE = 0.015
MAX_DISORDER_MS = 5_000
LATE_RATE = 0.0002
LATE_DELAY_MS = (180_000, 360_000)
SELF_VIEW_RATE = 0.002
OTHER_POSTS_PER_RELATED = 10
OTHER_VIEWS_PER_RELATED = 20
DELAYED_POST_RATE = 0.1
DELAYED_POST_MS = (60_000, 180_000)

VIEW, IMPRESSION, POST, PRESENCE = 0, 1, 2, 3
TYPE_NAMES = ("view", "impression", "post", "presence")
SPACE_ID = 1
PUBLISHED_START_LISTENERS = 1_000_000
PUBLISHED_PEAK_LISTENERS = 1_300_000
PEAK_MINUTE = 87  # 21:14 ET
STAYING_LISTENERS = 0.7
VANISHING_LISTENERS = 0.1


def _enum(event_type: str, name: str) -> list[str]:
    return schemas.load_schema(event_type)["properties"][name]["enum"]


@dataclass
class Night:
    """The night's events as parallel arrays, in arrival order (duplicates included)."""

    kind: np.ndarray          # VIEW / IMPRESSION / POST / PRESENCE
    event_index: np.ndarray   # identity of the event: a duplicate repeats it
    event_time: np.ndarray    # ms
    arrival: np.ndarray       # ms
    post_id: np.ndarray
    author_id: np.ndarray
    viewer_id: np.ndarray
    surface: np.ndarray       # index into the schema's enum
    action: np.ndarray        # index into the schema's enum (impressions)
    late: np.ndarray          # bool
    duplicate: np.ndarray     # bool: a second delivery
    posts: dict               # post_id -> (reply_to, quote_of, links, tags)
    listener_sessions: np.ndarray  # (start_ms, end_ms) per listener, as the Space had them
    related_post_ids: np.ndarray  # the posts about the subject (the rest are about other things)
    seed: int


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Split total into integer parts proportional to weights, summing exactly to total."""
    shares = weights / weights.sum() * total
    parts = np.floor(shares).astype(np.int64)
    remainder = total - int(parts.sum())
    if remainder:
        parts[np.argsort(shares - parts)[::-1][:remainder]] += 1
    return parts


def _minute_density() -> np.ndarray:
    """Traffic over the three hours: a trickle while the flood delays the start, then the Space."""
    minutes = np.arange(NIGHT_MINUTES)
    density = np.where(minutes < FLOOD_DELAY_MINUTES, 0.15, 1.0)
    ramp = (minutes >= FLOOD_DELAY_MINUTES) & (minutes < FLOOD_DELAY_MINUTES + 10)
    density = np.where(ramp, 0.15 + 0.85 * (minutes - FLOOD_DELAY_MINUTES + 1) / 10, density)
    after = minutes >= FLOOD_DELAY_MINUTES + 10
    return np.where(after, 1.0 - 0.4 * (minutes - FLOOD_DELAY_MINUTES - 10) / NIGHT_MINUTES, density)


def _times_by_density(rng: np.random.Generator, count: int, density: np.ndarray) -> np.ndarray:
    per_minute = _allocate(count, density)
    minute = np.repeat(np.arange(NIGHT_MINUTES), per_minute)
    return NIGHT_START_MS + minute * 60_000 + rng.integers(0, 60_000, size=count)


def build_night(scale: int = 1000, seed: int = 20240812) -> Night:
    if scale < 1:
        raise ValueError(f"scale is 1:N with N >= 1, got {scale}")
    rng = np.random.default_rng(seed)
    density = _minute_density()
    subject_views = PUBLISHED_SUBJECT_VIEWS // scale
    n_posts = max(1, PUBLISHED_RELATED_POSTS // scale)
    related_views = PUBLISHED_RELATED_VIEWS // scale
    population = max(1_000, 100_000_000 // scale)

    # Related posts: created over the night, popularity Zipf-like, each about the subject
    # directly, down the reply/quote tree, by link, or only by the tracked tag. Other posts
    # (a tenth as many, a twentieth of the views) are about something else: attribution must
    # leave them out.
    n_other = max(1, n_posts // OTHER_POSTS_PER_RELATED)
    post_ids = np.arange(2, n_posts + n_other + 2, dtype=np.int64)
    created = np.concatenate([np.sort(_times_by_density(rng, n_posts, density)),
                              np.sort(_times_by_density(rng, n_other, density))])
    # A post needs time to be seen: none is created in the last minute of the window.
    created = np.minimum(created, NIGHT_END_MS - 60_000)
    authors = rng.integers(2, population + 2, size=n_posts + n_other)
    views_per_post = np.concatenate([
        _allocate(related_views, _zipf_weights(rng, n_posts)),
        _allocate(related_views // OTHER_VIEWS_PER_RELATED, _zipf_weights(rng, n_other)),
    ])
    posts = {}
    how = rng.random(n_posts + n_other)
    for i, pid in enumerate(post_ids.tolist()):
        if i < n_posts:
            parent = SUBJECT_POST_ID if i == 0 or rng.random() < 0.5 else int(post_ids[rng.integers(0, i)])
            tag = TRACKED_TAG
        else:  # a thread of its own: its first post replies to nothing
            parent = None if i == n_posts else int(post_ids[rng.integers(n_posts, i)])
            tag = "news"
        relation = how[i]  # reply, quote, link or tag only, by share
        reply_to = parent if relation < 0.55 else None
        quote_of = parent if 0.55 <= relation < 0.8 else None
        links = [parent] if 0.8 <= relation < 0.92 and parent is not None else []
        tags = [tag] if relation >= 0.92 or rng.random() < 0.1 else []
        posts[pid] = (reply_to, quote_of, links, tags)
    n_posts_all = n_posts + n_other

    # Views: the subject's follow the night's curve; a related post's decay from its creation.
    s_times = _times_by_density(rng, subject_views, density)
    r_post_index = np.repeat(np.arange(n_posts_all), views_per_post)
    r_created = created[r_post_index]
    r_times = r_created + rng.exponential(40 * 60_000, size=len(r_post_index)).astype(np.int64)
    overflow = r_times >= NIGHT_END_MS
    while overflow.any():  # keep every view inside the window: the counts are the published ones
        r_times[overflow] = r_created[overflow] + rng.integers(0, NIGHT_END_MS - r_created[overflow])
        overflow = r_times >= NIGHT_END_MS
    view_time = np.concatenate([s_times, r_times])
    view_post = np.concatenate([np.full(subject_views, SUBJECT_POST_ID), post_ids[r_post_index]])
    view_author = np.concatenate([np.full(subject_views, HOST_AUTHOR_ID), authors[r_post_index]])
    n_views = len(view_time)
    # Viewers: a skewed population (a few heavy users), some authors viewing their own post.
    viewers = (population * rng.random(n_views) ** 2).astype(np.int64) + 2
    self_view = rng.random(n_views) < SELF_VIEW_RATE
    viewers[self_view] = view_author[self_view]
    surfaces = rng.choice(len(_enum("view", "surface")), size=n_views,
                          p=_surface_weights(len(_enum("view", "surface"))))

    # Impressions: interactions a little after some views, same viewer, post and surface.
    interacted = np.flatnonzero(rng.random(n_views) < IMPRESSION_RATE)
    i_time = np.minimum(view_time[interacted] + rng.integers(500, 20_000, size=len(interacted)), NIGHT_END_MS - 1)
    n_imp = len(interacted)
    actions = rng.integers(0, len(_enum("impression", "action")), size=n_imp)

    p_time, p_listener, p_action, listener_sessions = _listeners(rng, scale, population)
    n_presence = len(p_time)
    none = np.zeros(n_posts_all + n_presence, dtype=np.int64)
    kind = np.concatenate([np.full(n_views, VIEW), np.full(n_imp, IMPRESSION), np.full(n_posts_all, POST),
                           np.full(n_presence, PRESENCE)]).astype(np.int8)
    event_time = np.concatenate([view_time, i_time, created, p_time])
    post_id = np.concatenate([view_post, view_post[interacted], post_ids, np.full(n_presence, SPACE_ID)])
    author_id = np.concatenate([view_author, view_author[interacted], authors, np.zeros(n_presence, dtype=np.int64)])
    viewer_id = np.concatenate([viewers, viewers[interacted], np.zeros(n_posts_all, dtype=np.int64), p_listener])
    surface = np.concatenate([surfaces, surfaces[interacted], none])
    action = np.concatenate([np.zeros(n_views, dtype=np.int64), actions, np.zeros(n_posts_all, dtype=np.int64),
                             p_action])
    n_events = len(kind)
    event_index = np.arange(n_events, dtype=np.int64)

    arrival = event_time + rng.integers(0, MAX_DISORDER_MS + 1, size=n_events)
    # Some posts' creation events reach us after their first views: attribution must wait.
    post_events = np.flatnonzero(kind == POST)
    delayed_posts = post_events[rng.random(len(post_events)) < DELAYED_POST_RATE]
    arrival[delayed_posts] = event_time[delayed_posts] + rng.integers(*DELAYED_POST_MS, size=len(delayed_posts))
    counted = (kind == VIEW) | (kind == IMPRESSION)
    n_late = max(1, int(round(LATE_RATE * int(counted.sum()))))
    late_events = rng.choice(np.flatnonzero(counted), size=n_late, replace=False)
    arrival[late_events] = event_time[late_events] + rng.integers(*LATE_DELAY_MS, size=n_late)
    late = np.zeros(n_events, dtype=bool)
    late[late_events] = True

    # Duplicates: a second delivery of the same event (same bytes) within the disorder bound.
    dup = np.flatnonzero((rng.random(n_events) < DUPLICATE_RATE) & ~late)
    dup_arrival = event_time[dup] + rng.integers(0, MAX_DISORDER_MS + 1, size=len(dup))
    take = np.concatenate([event_index, dup])
    all_arrival = np.concatenate([arrival, dup_arrival])
    duplicate = np.concatenate([np.zeros(n_events, dtype=bool), np.ones(len(dup), dtype=bool)])
    order = np.lexsort((take, all_arrival))
    take, all_arrival, duplicate = take[order], all_arrival[order], duplicate[order]
    return Night(
        kind=kind[take], event_index=take, event_time=event_time[take], arrival=all_arrival,
        post_id=post_id[take], author_id=author_id[take], viewer_id=viewer_id[take],
        surface=surface[take], action=action[take], late=late[take], duplicate=duplicate,
        posts=posts, listener_sessions=listener_sessions, related_post_ids=post_ids[:n_posts], seed=seed,
    )


def _listeners(rng: np.random.Generator, scale: int, population: int):
    """The Space's presence events: about 1M/scale join when it finally starts after the flood,
    more join until the 1.3M/scale peak near 21:14 ET, then they drift away; most stay to the
    end; a tenth of those leaving early just vanish (their heartbeats stop, no leave)."""
    from pipelines.rollups.listeners import HEARTBEAT_INTERVAL_MS, HEARTBEAT_TIMEOUT_MS

    minute = 60_000
    start = NIGHT_START_MS + FLOOD_DELAY_MINUTES * minute
    n_first = max(1, PUBLISHED_START_LISTENERS // scale)
    n_later = max(1, (PUBLISHED_PEAK_LISTENERS - PUBLISHED_START_LISTENERS) * 13 // 10 // scale)
    joins = np.concatenate([
        start + rng.integers(0, 4 * minute, size=n_first),
        rng.integers(start + 4 * minute, NIGHT_START_MS + PEAK_MINUTE * minute, size=n_later),
    ])
    n = len(joins)
    listener_ids = rng.choice(population, size=n, replace=False).astype(np.int64) + 2
    stays = rng.random(n) < STAYING_LISTENERS
    leave = np.where(stays, NIGHT_END_MS - rng.integers(1, minute, size=n),
                     joins + minute + (rng.random(n) * (NIGHT_END_MS - joins - 2 * minute)).astype(np.int64))
    vanish = ~stays & (rng.random(n) < VANISHING_LISTENERS)
    beats = np.maximum(0, (leave - joins - 1) // HEARTBEAT_INTERVAL_MS)
    who = np.repeat(np.arange(n), beats)
    nth = np.arange(len(who)) - np.repeat(np.cumsum(beats) - beats, beats) + 1
    beat_times = joins[who] + nth * HEARTBEAT_INTERVAL_MS
    last_seen = joins + beats * HEARTBEAT_INTERVAL_MS
    sessions = np.stack([joins, np.where(vanish, last_seen + HEARTBEAT_TIMEOUT_MS, leave)], axis=1)
    leavers = np.flatnonzero(~vanish)
    actions = _enum("presence", "action")
    times = np.concatenate([joins, beat_times, leave[leavers]])
    listeners = np.concatenate([listener_ids, listener_ids[who], listener_ids[leavers]])
    action_index = np.concatenate([np.full(n, actions.index("join")), np.full(len(who), actions.index("heartbeat")),
                                   np.full(len(leavers), actions.index("leave"))])
    return times, listeners, action_index, sessions


def _zipf_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 1.1
    rng.shuffle(weights)
    return weights


def _surface_weights(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 1.3  # home first, then search, profile, ...
    return weights / weights.sum()


def event_id(seed: int, index: int) -> str:
    return f"{seed:x}-{index:x}"
