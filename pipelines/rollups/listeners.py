"""Listeners of a live Space: sessions from presence events, concurrent listeners per minute.

A session opens at a join (or at a heartbeat of a listener with no open session, whose join
was missed) and closes at a leave, or at its last heartbeat plus HEARTBEAT_TIMEOUT_MS when
the client vanished. Concurrent listeners at a minute = sessions open at any moment of it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

HEARTBEAT_INTERVAL_MS = 60_000
# Two missed heartbeats and a half: long enough for a slow network, short enough for the curve.
HEARTBEAT_TIMEOUT_MS = 150_000


def sessions(events: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, int]]:
    """(listener_id, start_ms, end_ms) from (listener_id, event_time_ms, action) sorted by
    listener then time. Duplicate events change nothing."""
    result = []
    current = None  # (listener, start, last_seen)

    def close(end_ms: int) -> None:
        result.append((current[0], current[1], end_ms))

    for listener, at, action in events:
        if current is not None and (current[0] != listener or at - current[2] > HEARTBEAT_TIMEOUT_MS):
            close(current[2] + HEARTBEAT_TIMEOUT_MS)
            current = None
        if action == "leave":
            if current is not None:
                close(at)
                current = None
            continue
        if current is None:
            current = (listener, at, at)
        elif action == "join":  # a re-join while open: the same session goes on
            current = (listener, current[1], at)
        else:
            current = (listener, current[1], at)
    if current is not None:
        close(current[2] + HEARTBEAT_TIMEOUT_MS)
    return result


def concurrent_per_minute(intervals: Iterable[tuple[int, int]], start_ms: int, minutes: int) -> np.ndarray:
    """Sessions open at any moment of each minute [start_ms + 60 s * i, + 60 s)."""
    delta = np.zeros(minutes + 1, dtype=np.int64)
    for begin, end in intervals:
        first = max(0, (begin - start_ms) // 60_000)
        last = min(minutes - 1, (end - 1 - start_ms) // 60_000)  # a session ending at a minute's start is not in it
        if end > begin and last >= first and first < minutes:
            delta[first] += 1
            delta[last + 1] -= 1
    return np.cumsum(delta)[:minutes]
