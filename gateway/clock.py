"""Time, injected: the scheduler and drivers take a :class:`Clock` so tests can control it."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from gateway.timekeeping import TrustCheck


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch (UTC); what readings are stamped and polls aligned with."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; what timeouts and backoff are measured with."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def synchronised(self) -> bool:
        """Whether :meth:`wall` can be believed now (see :mod:`gateway.timekeeping`)."""
        ...


class SystemClock:
    def __init__(self, trust: TrustCheck | None = None) -> None:
        self._trust = trust or TrustCheck()

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def synchronised(self) -> bool:
        return self._trust.synchronised(self.wall(), self.monotonic())


def epoch_ms(clock: Clock) -> int:
    return round(clock.wall() * 1000)
