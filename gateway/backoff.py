"""Capped exponential backoff with jitter, as a pure function so it is tested without sleeping."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    failures: int,
    base: float = 1.0,
    cap: float = 60.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after ``failures`` consecutive failed attempts (``failures >= 1``).

    The ceiling doubles per failure up to ``cap``; the delay is drawn from its upper half
    ("equal jitter"), so a fleet of gateways that lost the same broker does not reconnect in
    lockstep, yet none retries immediately.
    """
    if failures < 1:
        return 0.0
    ceiling = min(cap, base * 2.0 ** min(failures - 1, 62))
    return ceiling / 2 + rand() * ceiling / 2


class Backoff:
    """Tracks consecutive failures of one connection and when the next attempt is allowed."""

    def __init__(self, base: float, cap: float, rand: Callable[[], float] = random.random) -> None:
        self._base = base
        self._cap = cap
        self._rand = rand
        self.failures = 0
        self.next_attempt_at = 0.0

    def failed(self, now: float) -> float:
        """Record a failure at monotonic time ``now``; returns the delay until the next try."""
        self.failures += 1
        delay = backoff_delay(self.failures, self._base, self._cap, self._rand)
        self.next_attempt_at = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.next_attempt_at = 0.0

    def may_attempt(self, now: float) -> bool:
        return now >= self.next_attempt_at
