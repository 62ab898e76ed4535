"""Sessions from presence events and the concurrent-listener curve."""

import random
from datetime import datetime, timedelta

import numpy as np

from pipelines.rollups.listeners import HEARTBEAT_TIMEOUT_MS, concurrent_per_minute, sessions
from pipelines.rollups.subject_rows import present_in

M = 60_000


def test_a_leave_closes_the_session_and_a_vanished_client_times_out():
    events = [(1, 0, "join"), (1, M, "heartbeat"), (1, 90_000, "leave"),
              (2, 0, "join"), (2, M, "heartbeat")]
    assert sessions(events) == [(1, 0, 90_000), (2, 0, M + HEARTBEAT_TIMEOUT_MS)]


def test_duplicates_change_nothing_and_a_missed_join_starts_at_the_heartbeat():
    events = [(3, M, "heartbeat"), (3, M, "heartbeat"), (3, 2 * M, "leave"), (3, 2 * M, "leave")]
    assert sessions(events) == [(3, M, 2 * M)]


def test_a_long_silence_splits_sessions():
    events = [(4, 0, "join"), (4, HEARTBEAT_TIMEOUT_MS + M, "heartbeat")]
    second_start = HEARTBEAT_TIMEOUT_MS + M
    assert sessions(events) == [(4, 0, HEARTBEAT_TIMEOUT_MS), (4, second_start, second_start + HEARTBEAT_TIMEOUT_MS)]


def test_a_session_counts_in_every_minute_it_touches_and_not_where_it_ends():
    curve = concurrent_per_minute([(30_000, 2 * M), (M, M + 1)], 0, 4)
    assert curve.tolist() == [1, 2, 0, 0]


def _walked(events):
    """The definition, walked one event at a time (the module's docstring), as an oracle."""
    result, current = [], None
    for listener, at, action in events:
        if current is not None and (current[0] != listener or at - current[2] > HEARTBEAT_TIMEOUT_MS):
            result.append((current[0], current[1], current[2] + HEARTBEAT_TIMEOUT_MS))
            current = None
        if action == "leave":
            if current is not None:
                result.append((current[0], current[1], at))
            current = None
        elif current is None:
            current = (listener, at, at)
        else:
            current = (listener, current[1], at)
    if current is not None:
        result.append((current[0], current[1], current[2] + HEARTBEAT_TIMEOUT_MS))
    return result


def test_sessions_on_columns_are_the_walked_definition_on_random_presence():
    rng = random.Random(20261207)
    for _ in range(200):
        events = sorted(
            (rng.choice([1, 2, 3, 2**63 + 5]), rng.choice([0, 1, 59_999, 60_000]) + rng.randrange(0, 12) * 40_000,
             rng.choice(["join", "heartbeat", "heartbeat", "leave"]))
            for _ in range(rng.randrange(0, 40)))
        events = sorted(events, key=lambda e: (e[0], e[1]))  # ties keep a random action order
        assert sessions(events) == _walked(events)


def test_listeners_present_in_each_minute_are_those_of_sessions_touching_it():
    t0 = datetime(2024, 8, 13, 1, 0)
    ms = int((t0 - datetime(1970, 1, 1)).total_seconds() * 1000)
    listener = np.array([5, 6, 5, 7], dtype=np.uint64)
    begin = np.array([ms - 10 * M, ms + 30_000, ms + M, ms + 3 * M], dtype=np.int64)
    finish = np.array([ms + 2 * M, ms + 90_000, ms + M + 1, ms + 3 * M], dtype=np.int64)  # 7: empty
    minutes = [t0 + timedelta(minutes=i) for i in (0, 1, 2, 3)]
    assert present_in(listener, begin, finish, minutes) == [[5, 6], [5, 6], [], []]
    assert present_in(listener, begin, finish, [minutes[1], minutes[3]]) == [[5, 6], []]
