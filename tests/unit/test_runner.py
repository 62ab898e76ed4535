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


def test_a_busy_server_is_waited_out_like_an_absent_one_and_a_wrong_statement_is_raised():
    import pytest
    from clickhouse_driver.errors import ServerException

    from pipelines.store.clickhouse import is_transient

    too_many = ServerException("Too many simultaneous queries. Maximum: 1", code=202)
    memory = ServerException("Memory limit (for query) exceeded", code=241)
    unknown_table = ServerException("Table viewcount.nope doesn't exist.", code=60)
    assert is_transient(too_many) and is_transient(memory) and is_transient(ConnectionResetError())
    assert not is_transient(unknown_table) and not is_transient(ValueError("a bug"))

    outcomes = iter([too_many, memory, 1, unknown_table])

    def step():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    refresh = _WhileClickHouseAway("the subject rollups' refresh", _Client(), step)
    assert refresh() is None
    refresh.next_at = 0.0
    assert refresh() is None
    refresh.next_at = 0.0
    assert refresh() == 1
    with pytest.raises(ServerException):
        refresh()
