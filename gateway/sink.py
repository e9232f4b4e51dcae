"""The one entry point of readings into the core, for polled and streaming drivers alike (as
Telegraf's inputs all feed one accumulator): store the reading, then record the device's health
and the progress the systemd watchdog is fed from."""

from __future__ import annotations

import dataclasses
import logging

from gateway.buffer import Buffer
from gateway.clock import Clock
from gateway.descriptions import Descriptions
from gateway.errors import DeviceError, StorageDeferred, StorageError
from gateway.health import HealthRegistry
from gateway.readings import DeviceIdentity, Reading, Unsynchronised
from gateway.timekeeping import RECHECK_EVERY, StepLog

log = logging.getLogger(__name__)


class Sink:
    """Implements :class:`gateway.driver.ReadingSink` on the buffer."""

    def __init__(
        self,
        buffer: Buffer,
        health: HealthRegistry,
        clock: Clock,
        descriptions: Descriptions | None = None,
    ) -> None:
        """``descriptions``: where what devices say of themselves goes (for the fleet's
        descriptions); without it, :meth:`describe` is ignored."""
        self._buffer = buffer
        self._health = health
        buffer.on_stored = self._stored
        self._clock = clock
        self._descriptions = descriptions
        #: Held rows may wait from an earlier run in this boot: look once the clock is good.
        self._restamp_due = True
        #: Unsynchronised readings submitted and not yet on disk: a restamp that runs
        #: meanwhile may miss them, so another is due.
        self._unsynced_in_flight = 0
        self._synchronised: bool | None = None
        #: Shared by every poller, so a step of the wall clock is logged once.
        self.steps = StepLog()

    async def submit(self, reading: Reading) -> None:
        """Store ``reading``; when this returns normally it is committed to disk (with its
        group) or, if the disk fails, it waits in the buffer's memory queue (the buffer reports
        that, once per outage), or it was lost and is counted. The device answered either way,
        so its health records a success."""
        device = self._health.device(reading.device)
        stamped = not self._clock_synchronised()
        if stamped:
            reading = self._held_stamp(reading)
        elif self._restamp_due:
            await self._restamp()
        try:
            await self._buffer.append(reading)
        except StorageDeferred:
            self._health.progress.readings_held += 1
        except StorageError as exc:
            self._lost(str(exc))
        except Exception as exc:
            log.debug("unexpected error from the buffer", exc_info=exc)
            self._lost(f"unexpected {type(exc).__name__}: {exc}")
        finally:
            if stamped:
                self._unsynced_in_flight -= 1
        device.succeeded(reading.read_at_ms)

    def _stored(self, count: int) -> None:
        self._health.progress.stored(self._clock.monotonic(), count)

    def _clock_synchronised(self) -> bool:
        synchronised = self._clock.synchronised()
        if synchronised is not self._synchronised:
            if not synchronised:
                log.warning(
                    "the wall clock is not synchronised (no NTP sync yet, or a time before "
                    "this release): readings are stored with monotonic time and held back "
                    "from the broker until it is"
                )
            elif self._synchronised is not None:
                log.info("the wall clock is synchronised: held readings are restamped and sent")
            self._synchronised = synchronised
        return synchronised

    def _held_stamp(self, reading: Reading) -> Reading:
        # The wall and monotonic clocks run together between steps, so the reading's age is
        # the same on both: its moment on the monotonic clock follows from its wall stamp.
        age_ms = round(self._clock.wall() * 1000) - reading.read_at_ms
        monotonic_ms = round(self._clock.monotonic() * 1000) - age_ms
        self._restamp_due = True
        self._unsynced_in_flight += 1
        stamp = Unsynchronised(self._buffer.boot_id, monotonic_ms)
        return dataclasses.replace(reading, unsynchronised=stamp)

    async def _restamp(self) -> None:
        wall_ms = round(self._clock.wall() * 1000)
        monotonic_ms = round(self._clock.monotonic() * 1000)
        try:
            count = await self._buffer.restamp(wall_ms, monotonic_ms)
        except StorageError as exc:
            # The buffer's health reports a failing disk; the next reading tries again.
            log.debug("held readings not restamped yet: %s", exc)
            return
        # Readings waiting in memory or in a group not yet written were not in that update.
        self._restamp_due = self._buffer.held > 0 or self._unsynced_in_flight > 0
        if count:
            log.info("restamped %d reading(s) taken before the clock synchronised", count)

    async def watch_clock(self) -> None:
        """Restamp held readings once the clock synchronises even when no reading comes to do
        it (every device down, or polled hourly): checked every few seconds, until cancelled."""
        while True:
            await self._clock.sleep(RECHECK_EVERY)
            if self._restamp_due and self._clock_synchronised():
                await self._restamp()

    def device_failed(self, device: str, error: DeviceError) -> None:
        self._health.device(device).failed(str(error))

    def describe(self, device: str, identity: DeviceIdentity) -> None:
        if self._descriptions is not None and self._descriptions.identify(device, identity):
            log.debug("%s describes itself: %s", device, identity)

    def device_faulted(self, device: str, error: Exception) -> None:
        """The driver of ``device`` raised something that is not a DeviceError (a bug)."""
        self._health.device(device).faulted(error)

    def cycles_skipped(self, device: str, cycles: int) -> None:
        self._health.device(device).skipped(cycles)

    def _lost(self, error: str) -> None:
        self._health.progress.readings_lost += 1
        self._health.storing.failed(error)
