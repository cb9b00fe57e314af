"""The one wait loop: retry an attempt with backoff until a deadline, saying at INFO what it waits for.

Every wait in this package (MLflow reachable, the database, its schema, the object store, a local component
healthy) goes through `wait_until`, so a slow start always explains itself in the logs instead of going quiet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class NotYet(Exception):
    """Raised by an attempt that reached the service but whose condition does not hold yet."""


def wait_until(
    attempt: Callable[[float], T],
    *,
    what: str,
    timeout_s: float,
    retry_on: tuple[type[BaseException], ...] = (),
    on_timeout: Callable[[str], Exception],
    attempt_timeout_s: float = 5.0,
    first_delay_s: float = 0.25,
    max_delay_s: float = 5.0,
    log_every_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call `attempt(per_attempt_timeout_s)` until it returns. Exceptions in `retry_on` (and NotYet) mean
    "try again"; any other propagates. Logs progress at INFO every `log_every_s`. After `timeout_s`, raises
    `on_timeout(last_reason)`."""
    retryable: tuple[type[BaseException], ...] = (NotYet, *retry_on)
    start = clock()
    deadline = start + timeout_s
    delay = first_delay_s
    last_log = start
    while True:
        remaining = deadline - clock()
        try:
            return attempt(max(0.5, min(attempt_timeout_s, remaining)))
        except retryable as exc:
            reason = str(exc) or type(exc).__name__
        now = clock()
        if now >= deadline:
            raise on_timeout(reason)
        if now - last_log >= log_every_s or now == start:
            log.info(
                "waiting for %s (%.0f s so far, %.0f s left): %s", what, now - start, deadline - now, reason
            )
            last_log = now
        sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 2, max_delay_s)
