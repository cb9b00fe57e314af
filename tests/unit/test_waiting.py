"""The one wait loop: retries, says what it waits for at INFO, and gives up with the last reason."""

from __future__ import annotations

import logging

import pytest

from modelops.waiting import NotYet, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_retries_until_the_condition_holds_logging_progress(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    attempts: list[float] = []

    def attempt(timeout_s: float) -> str:
        attempts.append(timeout_s)
        if clock.now < 12:
            raise NotYet("schema at 1a2b, expected 3c4d")
        return "done"

    with caplog.at_level(logging.INFO, logger="modelops.waiting"):
        result = wait_until(
            attempt,
            what="the database schema",
            timeout_s=60,
            on_timeout=RuntimeError,
            sleep=clock.sleep,
            clock=clock,
        )
    assert result == "done" and len(attempts) > 3
    assert all(0.5 <= t <= 5.0 for t in attempts)  # every attempt has its own bounded timeout
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert lines and all(
        "waiting for the database schema" in line and "expected 3c4d" in line for line in lines
    )
    assert 2 <= len(lines) <= 4  # every few seconds, not every attempt


def test_gives_up_at_the_deadline_with_the_last_reason() -> None:
    clock = Clock()

    def refused(_: float) -> None:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(RuntimeError, match="connection refused"):
        wait_until(
            refused,
            what="MLflow",
            timeout_s=10,
            retry_on=(ConnectionRefusedError,),
            on_timeout=RuntimeError,
            sleep=clock.sleep,
            clock=clock,
        )
    assert 10 <= clock.now < 16


def test_other_errors_are_not_retried() -> None:
    def broken(_: float) -> None:
        raise ValueError("bad configuration")

    with pytest.raises(ValueError, match="bad configuration"):
        wait_until(broken, what="x", timeout_s=10, on_timeout=RuntimeError, sleep=lambda _: None)
