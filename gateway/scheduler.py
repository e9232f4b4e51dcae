"""Polls each device on its own interval, aligned to the wall clock (every 10 s at :00, :10 …).

Each device has its own task, so a slow or failing device delays nobody else (devices on one bus
still take turns on the wire, which the bus driver enforces). A poll that overruns its slot
never piles up: the next poll waits for the next free slot and the skipped cycles are counted.
"""

from __future__ import annotations

import asyncio
import math

from gateway.clock import Clock
from gateway.driver import PolledDevice
from gateway.errors import DeviceError
from gateway.sink import Sink


def next_slot(now: float, interval: float) -> float:
    """The first wall-clock multiple of ``interval`` strictly after ``now``."""
    return (math.floor(now / interval) + 1) * interval


def following_slot(due: float, now: float, interval: float) -> tuple[float, int]:
    """After the poll due at ``due`` finished at ``now``: when the next poll is due, and how many
    slots were skipped because the poll ran past them."""
    following = due + interval
    if now < following:
        return following, 0
    free = next_slot(now, interval)
    return free, round((free - following) / interval)


class DevicePoller:
    """Owns the polling of one device: read it on its slots and hand the reading to the sink.

    The loop ends when ``stop`` is set, checked around every await: on Python 3.11 a
    cancellation that lands in the same loop step as a driver's answer can be swallowed by
    ``asyncio.wait_for`` (pymodbus uses it for every request), so cancelling alone cannot be
    relied on to end a loop.
    """

    def __init__(
        self, device: PolledDevice, interval: float, sink: Sink, clock: Clock, stop: asyncio.Event
    ) -> None:
        self.device = device
        self.interval = interval
        self._sink = sink
        self._clock = clock
        self._stop = stop

    async def run(self) -> None:
        due = next_slot(self._clock.wall(), self.interval)
        while not self._stop.is_set():
            wait = due - self._clock.wall()
            if wait > self.interval:
                # The wall clock went back (NTP's first sync on a box without an RTC): realign
                # instead of sleeping until the old time comes round again.
                due = next_slot(self._clock.wall(), self.interval)
                continue
            await self._clock.sleep(max(0.0, wait))
            if self._stop.is_set():
                return
            await self.poll_once()
            due, skipped = following_slot(due, self._clock.wall(), self.interval)
            if skipped:
                self._sink.cycles_skipped(self.device.name, skipped)

    async def poll_once(self) -> None:
        name = self.device.name
        try:
            reading = await self.device.read()
        except DeviceError as exc:
            self._sink.device_failed(name, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a driver's bug costs its device, nothing more
            self._sink.device_faulted(name, exc)
            return
        # The poll counts as done only once the reading is committed to disk.
        await self._sink.submit(reading)
