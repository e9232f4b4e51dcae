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
from gateway.timekeeping import STEP_THRESHOLD


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


def slot_after_step(polled_at: float, now: float, interval: float) -> tuple[float, int]:
    """After the wall clock stepped: the next poll's slot, from when the last poll began
    (``polled_at``, told on the new clock) and the time now; and the slots skipped.

    The slot after the one that poll served comes next, so a step back does not poll a slot
    again and a step forward neither bursts nor counts the hours it jumped as skipped. A slot
    passed by less than half an interval is polled at once, late, rather than skipped."""
    following = (round(polled_at / interval) + 1) * interval
    if now - following < interval / 2:
        return following, 0
    return following_slot(following - interval, now, interval)


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
        self._offset = 0.0

    async def run(self) -> None:
        clock = self._clock
        due = next_slot(clock.wall(), self.interval)
        # The wall clock less the monotonic one: it changes only when the wall clock steps.
        self._offset = clock.wall() - clock.monotonic()
        #: When the last poll began, on the monotonic clock.
        polled_at: float | None = None
        while not self._stop.is_set():
            wait = due - clock.wall()
            if wait > self.interval + STEP_THRESHOLD:
                # Only a step the offset did not show (it cannot, with a clock whose monotonic
                # side moved too): realign instead of waiting for the old time to come round.
                due = next_slot(clock.wall(), self.interval)
                continue
            # Sleeping is on the monotonic clock: a step while asleep is seen on waking.
            await clock.sleep(max(0.0, wait))
            if self._stop.is_set():
                return
            if self._stepped():
                due = (
                    next_slot(clock.wall(), self.interval)
                    if polled_at is None
                    else slot_after_step(polled_at + self._offset, clock.wall(), self.interval)[0]
                )
                continue
            polled_at = clock.monotonic()
            await self.poll_once()
            if self._stepped():
                due, skipped = slot_after_step(
                    polled_at + self._offset, clock.wall(), self.interval
                )
            else:
                due, skipped = following_slot(due, clock.wall(), self.interval)
            if skipped:
                self._sink.cycles_skipped(self.device.name, skipped)

    def _stepped(self) -> bool:
        """Whether the wall clock stepped since the last look (logged once for all pollers)."""
        offset = self._clock.wall() - self._clock.monotonic()
        if abs(offset - self._offset) <= STEP_THRESHOLD:
            return False
        self._sink.steps.noticed(self._offset, offset)
        self._offset = offset
        return True

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
