"""Polling with a deadline and a useful failure message: the one way tests wait on the cluster.

A Kubernetes test has to wait for *another process* (apiserver, scheduler, kwok) to act; there is no
event to gate on in-process, so we poll an observable predicate with a short interval and fail with a
description of what we were waiting for and the last value seen. Never a bare sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """Raised when the predicate did not hold before the deadline."""


def until(
    probe: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.2,
    what: str = "condition",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` until it returns a truthy value, and return that value.

    Exceptions from ``probe`` count as "not yet" (the API may not be ready), but the last one is
    reported if the deadline passes; exceptions of the ``fatal`` types propagate at once.
    """
    deadline = clock() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except fatal:
            raise
        except Exception as exc:  # reported below if we give up
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if clock() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {last!r}")
        sleep(interval)
