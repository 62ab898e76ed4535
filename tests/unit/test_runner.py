"""The runner's helpers of the loader while ClickHouse is away (a fake step: no services)."""

from __future__ import annotations

import logging

from pipelines.stream.runner import _WhileClickHouseAway


class _Client:
    disconnects = 0

    def disconnect(self) -> None:
        self.disconnects += 1


def test_a_step_backs_off_while_clickhouse_is_away_and_the_log_says_when_it_is_back(caplog):
    outcomes = iter([ConnectionRefusedError("refused"), ConnectionResetError("reset"), False, 3])

    def step():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    client = _Client()
    follow = _WhileClickHouseAway("the change feed", client, step)
    caplog.set_level(logging.INFO, logger="viewcount.runner")
    assert follow() is None
    assert follow() is None  # not due yet: the step is not called during the backoff
    follow.next_at = 0.0
    assert follow() is None
    assert follow.delay == 2.0  # 0.5 s, then 1 s, then doubled again
    follow.next_at = 0.0
    assert follow() is False  # did nothing: says nothing about ClickHouse
    assert follow() == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("could not reach ClickHouse" in m and "retrying with backoff" in m for m in messages) == 1
    assert sum("reached ClickHouse again" in m for m in messages) == 1
    assert client.disconnects == 2
    assert follow.delay == 0.5 and follow.away_since is None
