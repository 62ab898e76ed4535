"""Listeners of a live Space: sessions from presence events, concurrent listeners per minute.

A session opens at a join (or at a heartbeat of a listener with no open session, whose join
was missed) and closes at a leave, or at its last heartbeat plus HEARTBEAT_TIMEOUT_MS when
the client vanished. Concurrent listeners at a minute = sessions open at any moment of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass
class PresenceMinutes:
    """A Space's presence events per listener and minute (sql/subject_rollups/listener_minutes.sql),
    as columns sorted by listener, then minute (minutes since the epoch): the count and last time
    (ms) of its joins and heartbeats, the count and first and last time of its leaves."""

    listener: np.ndarray
    minute: np.ndarray
    alive: np.ndarray
    last_alive: np.ndarray
    leaves: np.ndarray
    first_leave: np.ndarray
    last_leave: np.ndarray

    @classmethod
    def of_columns(cls, columns: list) -> PresenceMinutes:
        if not columns:
            columns = [[]] * 7
        listener, *rest = columns
        return cls(np.array(listener, dtype=np.uint64), *(np.array(c, dtype=np.int64) for c in rest))


def present(p: PresenceMinutes, minute: int) -> np.ndarray:
    """The listeners (ascending) with a session open at some moment of `minute` (minutes since the
    epoch), as `sessions` defines them, from the minutes up to it (a heartbeat timeout back is enough).

    Only a join or heartbeat opens a session, so one is open during the minute if the listener
    joined or beat in it, or if one was open at its first millisecond: the listener's last event
    before it was a join or heartbeat less than the timeout earlier (a leave or a silence would
    have closed it), and no leave came at that very millisecond. Of a leave and a join or
    heartbeat at the same millisecond the leave comes first (as sql/queries/space_presence.sql orders them)."""
    start_ms = minute * 60_000
    here = p.minute == minute
    before = p.minute < minute
    # Each listener's last minute before this one: the next row is another listener's, or not before.
    followed = np.zeros(len(before), dtype=bool)
    followed[:-1] = before[1:] & (p.listener[1:] == p.listener[:-1])
    last_before = before & ~followed
    ended_on_leave = (p.leaves > 0) & ((p.alive == 0) | (p.last_leave > p.last_alive))
    open_at_start = last_before & ~ended_on_leave & (start_ms < p.last_alive + HEARTBEAT_TIMEOUT_MS)
    left_at_start = p.listener[here & (p.leaves > 0) & (p.first_leave == start_ms)]
    carried = np.setdiff1d(p.listener[open_at_start], left_at_start)
    return np.union1d(p.listener[here & (p.alive > 0)], carried)


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
