"""Polls each device on its own interval, aligned to the wall clock (every 10 s at :00, :10 …).

Each device has its own task, so a slow or failing device delays nobody else (devices on one bus
still take turns on the wire, which the bus driver enforces). A poll that overruns its slot
never piles up: the next poll waits for the next free slot and the skipped cycles are counted.
"""

from __future__ import annotations

import math

from gateway.buffer import Buffer
from gateway.clock import Clock
from gateway.driver import PolledDevice
from gateway.errors import DeviceError, StorageError
from gateway.health import DeviceHealth


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
    """Owns the polling of one device: read, buffer, record health."""

    def __init__(self, device: PolledDevice, interval: float, buffer: Buffer, clock: Clock) -> None:
        self.device = device
        self.interval = interval
        self.health = DeviceHealth(device.name)
        self._buffer = buffer
        self._clock = clock

    async def run(self) -> None:
        due = next_slot(self._clock.wall(), self.interval)
        while True:
            wait = due - self._clock.wall()
            if wait > self.interval:
                # The wall clock went back (NTP's first sync on a box without an RTC): realign
                # instead of sleeping until the old time comes round again.
                due = next_slot(self._clock.wall(), self.interval)
                continue
            await self._clock.sleep(max(0.0, wait))
            await self.poll_once()
            due, skipped = following_slot(due, self._clock.wall(), self.interval)
            if skipped:
                self.health.skipped(skipped)

    async def poll_once(self) -> None:
        try:
            reading = await self.device.read()
        except DeviceError as exc:
            self.health.failed(str(exc))
            return
        try:
            # The poll counts as done only once the reading is committed to disk.
            await self._buffer.append(reading)
        except StorageError as exc:
            # Logged once per outage by the health transition, not once per poll.
            self.health.failed(f"reading lost, the buffer failed: {exc}")
            return
        self.health.succeeded(reading.read_at_ms)
