"""The one entry point of readings into the core, for polled and streaming drivers alike (as
Telegraf's inputs all feed one accumulator): store the reading, then record the device's health
and the progress the systemd watchdog is fed from."""

from __future__ import annotations

import logging

from gateway.buffer import Buffer
from gateway.clock import Clock
from gateway.errors import DeviceError, StorageDeferred, StorageError
from gateway.health import HealthRegistry
from gateway.readings import Reading

log = logging.getLogger(__name__)


class Sink:
    """Implements :class:`gateway.driver.ReadingSink` on the buffer."""

    def __init__(self, buffer: Buffer, health: HealthRegistry, clock: Clock) -> None:
        self._buffer = buffer
        self._health = health
        self._clock = clock

    async def submit(self, reading: Reading) -> None:
        """Store ``reading``; when this returns normally it is committed to disk (with its
        group) or, if the disk fails, it waits in the buffer's memory queue (the buffer reports
        that, once per outage), or it was lost and is counted. The device answered either way,
        so its health records a success."""
        device = self._health.device(reading.device)
        try:
            await self._buffer.append(reading)
        except StorageDeferred:
            self._health.progress.readings_held += 1
        except StorageError as exc:
            self._lost(str(exc))
        except Exception as exc:
            log.debug("unexpected error from the buffer", exc_info=exc)
            self._lost(f"unexpected {type(exc).__name__}: {exc}")
        else:
            self._health.progress.stored(self._clock.monotonic())
        device.succeeded(reading.read_at_ms)

    def device_failed(self, device: str, error: DeviceError) -> None:
        self._health.device(device).failed(str(error))

    def device_faulted(self, device: str, error: Exception) -> None:
        """The driver of ``device`` raised something that is not a DeviceError (a bug)."""
        self._health.device(device).faulted(error)

    def cycles_skipped(self, device: str, cycles: int) -> None:
        self._health.device(device).skipped(cycles)

    def _lost(self, error: str) -> None:
        self._health.progress.readings_lost += 1
        self._health.storing.failed(error)
