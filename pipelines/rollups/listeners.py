"""Listeners of a live Space: sessions from presence events, concurrent listeners per minute.

A session opens at a join (or at a heartbeat of a listener with no open session, whose join
was missed) and closes at a leave, or at its last heartbeat plus HEARTBEAT_TIMEOUT_MS when
the client vanished. Concurrent listeners at a minute = sessions open at any moment of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import numpy as np

HEARTBEAT_INTERVAL_MS = 60_000
# Two missed heartbeats and a half: long enough for a slow network, short enough for the curve.
HEARTBEAT_TIMEOUT_MS = 150_000


def sessions(events: Iterable[tuple[int, int, str]]) -> list[tuple[int, int, int]]:
    """(listener_id, start_ms, end_ms) from (listener_id, event_time_ms, action) sorted by
    listener then time. Duplicate events change nothing."""
    rows = list(events)
    listener = np.array([r[0] for r in rows], dtype=np.uint64)
    at = np.array([r[1] for r in rows], dtype=np.int64)
    leave = np.array([r[2] == "leave" for r in rows], dtype=bool)
    return list(zip(*(a.tolist() for a in session_arrays(listener, at, leave)), strict=True))


def session_arrays(listener: np.ndarray, at: np.ndarray, leave: np.ndarray) -> tuple[np.ndarray, ...]:
    """`sessions` on columns (sorted by listener, then time): the listeners, starts and ends of
    the sessions, as arrays, without a Python step per event.

    Walking a listener's events, a session is open after a join or heartbeat and closed by a leave
    or by a silence longer than the timeout. So a join or heartbeat opens one when its listener's
    previous event is not an open session's: another listener, a leave, or too long ago. It is
    its session's last when the next event is not the same listener's within the timeout, or is
    a leave (which ends the session at its own time; a leave with no open session is nothing)."""
    at = np.asarray(at, dtype=np.int64)
    leave = np.asarray(leave, dtype=bool)
    n = len(at)
    same = np.zeros(n + 1, dtype=bool)  # same[i]: event i is the same listener's as event i - 1
    same[1:n] = listener[1:] == listener[:-1]
    gap = np.zeros(n + 1, dtype=np.int64)
    gap[1:n] = at[1:] - at[:-1]
    within = same & (gap <= HEARTBEAT_TIMEOUT_MS)  # within[i]: event i follows event i - 1 in time
    after_leave = np.ones(n, dtype=bool)
    after_leave[1:] = leave[:-1]
    opens = ~leave & (~within[:n] | after_leave)
    next_leave = np.zeros(n, dtype=bool)
    next_leave[:-1] = leave[1:]
    next_at = np.empty(n, dtype=np.int64)
    next_at[:-1] = at[1:]
    ended_by_leave = within[1:] & next_leave
    last = ~leave & (~within[1:] | next_leave)
    end = np.where(ended_by_leave, next_at, at + HEARTBEAT_TIMEOUT_MS)
    return np.asarray(listener)[opens], at[opens], end[last]


def presence_sessions(client, space_id: int, start: datetime, end: datetime) -> tuple[np.ndarray, ...]:
    """`session_arrays` of the Space's presence events in [start, end), read as columns."""
    from pipelines.store.queries import query_text

    columns = client.execute(query_text("space_presence"), {"space_id": space_id, "from": start, "to": end},
                             columnar=True)
    if not columns:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    listener, at, leave = columns
    return session_arrays(np.array(listener, dtype=np.uint64), np.array(at, dtype=np.int64),
                          np.array(leave, dtype=bool))


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
