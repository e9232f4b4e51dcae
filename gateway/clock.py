"""Time, injected: the scheduler and drivers take a :class:`Clock` so tests can control it."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch (UTC); what readings are stamped and polls aligned with."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; what timeouts and backoff are measured with."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def epoch_ms(clock: Clock) -> int:
    return round(clock.wall() * 1000)
