"""One retry helper for everything that waits for a state: ``vm.wait_until`` and
``vm.wait_until_fails`` are built on it. The last attempt's output goes into the error,
so a timeout says what was seen, not only that it took too long."""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import WaitTimeout
from .validation import positive_seconds

Attempt = Callable[[float], tuple[bool, str]]
"""Called with the seconds left; returns (condition met?, what was seen)."""


def retry_until(attempt: Attempt, *, timeout: float, interval: float, what: str) -> str:
    """Call *attempt* every *interval* seconds until it reports success; return what
    it saw then. An attempt is always made once more when the time is up, so the
    error shows the state at the end.

    Raises:
        ConfigError: *timeout* or *interval* is not a positive number.
        WaitTimeout: no attempt succeeded within *timeout* seconds.
    """
    positive_seconds(timeout, "wait timeout")
    positive_seconds(interval, "wait interval")
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        ok, seen = attempt(max(deadline - time.monotonic(), interval))
        if ok:
            return seen
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(what, timeout, attempts, seen)
        time.sleep(min(interval, left))
