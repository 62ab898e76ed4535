"""The generator's night written straight into ClickHouse's tables, without Kafka or Flink.

For tests and benchmarks of the read side (subject rollups, the dashboard API): the archive
(events_raw, first deliveries only, late events included), posts, space_presence, then every
hour rebuilt from the archive with the backfill, so post_minute and post_hour hold what the
stream plus the hourly rebuild would. Optionally a crowd of unrelated posts in `posts`: the
platform's other traffic, which no subject query may have to read.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from pipelines.reference.night import IMPRESSION, POST, PRESENCE, VIEW, Night, _enum, event_id
from pipelines.repair.backfill import hours_with_events, rebuild_hour
from pipelines.store.clickhouse import EVENTS_RAW, POSTS, SPACE_PRESENCE, insert_rows

BLOCK_ROWS = 500_000
# Unrelated posts get ids far above the night's, so they never collide with its posts.
UNRELATED_POST_ID_BASE = 10_000_000_000


def _times(ms: np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(s, UTC) for s in (ms // 1000).tolist()]


def fill_night(client, night: Night, rebuild: bool = True) -> dict[str, int]:
    """Write the night's first deliveries into events_raw, posts and space_presence; rebuild its
    hours (post_minute, post_hour, post_surface_minute). Returns the row counts written."""
    first = ~night.duplicate
    surfaces, actions = _enum("view", "surface"), _enum("impression", "action")
    presence_actions = _enum("presence", "action")
    counted = np.flatnonzero(first & ((night.kind == VIEW) | (night.kind == IMPRESSION)))
    columns = ("event_type", "event_id", "event_time", "event_time_ms", "post_id", "author_id", "viewer_id",
               "surface", "client", "action")
    for start in range(0, len(counted), BLOCK_ROWS):
        take = counted[start:start + BLOCK_ROWS]
        kinds, ms = night.kind[take], night.event_time[take]
        rows = list(zip(
            np.where(kinds == VIEW, "view", "impression").tolist(),
            [event_id(night.seed, i) for i in night.event_index[take].tolist()],
            _times(ms), ms.tolist(), night.post_id[take].tolist(), night.author_id[take].tolist(),
            night.viewer_id[take].tolist(), [surfaces[s] for s in night.surface[take].tolist()],
            ["ios"] * len(take),
            [actions[a] if k == IMPRESSION else ""
             for k, a in zip(kinds.tolist(), night.action[take].tolist(), strict=True)],
            strict=True))
        insert_rows(client, EVENTS_RAW, columns, rows)
    posts = np.flatnonzero(first & (night.kind == POST))
    post_rows = []
    for i in posts.tolist():
        pid = int(night.post_id[i])
        reply_to, quote_of, links, tags = night.posts[pid]
        post_rows.append((pid, int(night.author_id[i]), datetime.fromtimestamp(int(night.event_time[i]) // 1000, UTC),
                          reply_to or 0, quote_of or 0, list(links), list(tags), 1))
    insert_rows(client, POSTS, ("post_id", "author_id", "created_at", "reply_to", "quote_of", "links", "tags",
                                "version"), post_rows)
    presence = np.flatnonzero(first & (night.kind == PRESENCE))
    ms = night.event_time[presence]
    insert_rows(client, SPACE_PRESENCE, ("space_id", "listener_id", "event_time", "event_time_ms", "action",
                                         "event_id"), list(zip(
        night.post_id[presence].tolist(), night.viewer_id[presence].tolist(), _times(ms), ms.tolist(),
        [presence_actions[a] for a in night.action[presence].tolist()],
        [event_id(night.seed, i) for i in night.event_index[presence].tolist()], strict=True)))
    hours = [rebuild_hour(client, hour) for hour in hours_with_events(client)] if rebuild else []
    return {"events_raw": len(counted), "posts": len(post_rows), "space_presence": len(presence),
            "post_minute": sum(h.rows for h in hours)}


def fill_unrelated_posts(client, count: int, seed: int = 7, start: datetime | None = None) -> int:
    """`count` posts about nothing tracked (threads among themselves, other tags), created over
    the day before the night: the rest of the platform in `posts`."""
    rng = np.random.default_rng(seed)
    start_s = int((start or datetime(2024, 8, 12, tzinfo=UTC)).timestamp())
    written = 0
    for block in range(0, count, BLOCK_ROWS):
        n = min(BLOCK_ROWS, count - block)
        ids = np.arange(block, block + n, dtype=np.int64) + UNRELATED_POST_ID_BASE
        # Each replies to an earlier unrelated post half the time (never to the night's posts).
        earlier = np.maximum(UNRELATED_POST_ID_BASE, ids - 1 - rng.integers(0, 1000, n))
        parents = np.where(rng.random(n) < 0.5, earlier, 0)
        parents[ids == UNRELATED_POST_ID_BASE] = 0
        created = start_s + rng.integers(0, 86_400, n)
        rows = list(zip(ids.tolist(), rng.integers(2, 10**8, n).tolist(),
                        [datetime.fromtimestamp(s, UTC) for s in created.tolist()],
                        parents.tolist(), [0] * n, [[]] * n, [["news"]] * n, [1] * n, strict=True))
        insert_rows(client, POSTS, ("post_id", "author_id", "created_at", "reply_to", "quote_of", "links", "tags",
                                    "version"), rows)
        written += n
    return written
