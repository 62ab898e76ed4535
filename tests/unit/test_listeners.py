"""Sessions from presence events and the concurrent-listener curve."""

import random

from pipelines.rollups.listeners import HEARTBEAT_TIMEOUT_MS, PresenceMinutes, concurrent_per_minute, present, sessions

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


def _by_minute(events):
    """What sql/subject_rollups/listener_minutes.sql returns for these events."""
    groups = {}
    for listener, at, action in events:
        groups.setdefault((listener, at // 60_000), []).append((at, action))
    rows = []
    for (listener, minute), got in sorted(groups.items()):
        alive = [at for at, action in got if action != "leave"]
        leaves = [at for at, action in got if action == "leave"]
        rows.append((listener, minute, len(alive), max(alive, default=0), len(leaves), min(leaves, default=0),
                     max(leaves, default=0)))
    return PresenceMinutes.of_columns([list(c) for c in zip(*rows, strict=True)] if rows else [])


def test_listeners_of_a_minute_from_its_listeners_minutes_are_those_of_the_sessions_touching_it():
    rng = random.Random(20261207)
    for _ in range(300):
        events = sorted(
            (rng.choice([1, 2, 3, 2**63 + 5]),
             rng.choice([0, 1, 59_999, 60_000, 90_000, 150_000, 210_000]) + rng.randrange(0, 8) * 60_000,
             rng.choice(["join", "heartbeat", "heartbeat", "leave"]))
            for _ in range(rng.randrange(0, 30)))
        # Of same-millisecond events, a leave first (sql/queries/space_presence.sql).
        events.sort(key=lambda e: (e[0], e[1], e[2] != "leave"))
        spans = _walked(events)
        by_minute = _by_minute(events)
        for minute in range(0, 14):
            start, end = minute * M, (minute + 1) * M
            expected = sorted({listener for listener, b, e in spans if b < end and e > start})
            assert present(by_minute, minute).tolist() == expected, (events, minute)
    assert present(_by_minute([]), 3).tolist() == []
