"""A clock whose time moves only when the test says so, for tests of several tasks at once: no
real sleeping, and what happens at each moment is counted, not timed."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class ManualClock:
    """``now`` is the monotonic time; the wall clock is ``now`` plus an offset that
    :meth:`step` changes, as NTP's first sync or ``date -s`` does, and ``synced`` is what
    :meth:`synchronised` answers."""

    def __init__(self, start: float, *, synced: bool = True) -> None:
        self.now = start
        self.offset = 0.0
        self.synced = synced
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def wall(self) -> float:
        return self.now + self.offset

    def step(self, seconds: float) -> None:
        """The wall clock jumps by ``seconds``; the monotonic one does not."""
        self.offset += seconds

    def synchronised(self) -> bool:
        return self.synced

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), wake))
        await wake

    def sleeping(self) -> int:
        return sum(1 for _, _, wake in self._sleepers if not wake.done())

    async def advance_to(self, moment: float, sleepers: int) -> None:
        """Wake every sleeper due by ``moment`` in time order; after each, wait until
        ``sleepers`` tasks are asleep again (the woken task did its work and slept)."""
        while self._sleepers and self._sleepers[0][0] <= moment:
            due, _, wake = heapq.heappop(self._sleepers)
            if wake.done():  # its task was cancelled
                continue
            self.now = due
            wake.set_result(None)
            await self.settle(sleepers)
        self.now = moment

    async def settle(self, sleepers: int) -> None:
        # Bounded: a task that never sleeps again fails the test instead of hanging it.
        async with asyncio.timeout(30):
            while self.sleeping() < sleepers:  # noqa: ASYNC110 - the woken task may be in a thread
                await asyncio.sleep(0.001)
