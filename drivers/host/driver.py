"""The host bus driver: the gateway box reports its own health as the readings of a device, so
a fleet manager sees a box overheating or its SD card filling like any meter value."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Self

from drivers.host.settings import HostBusSettings, HostDeviceSettings, HostMetric
from drivers.host.sources import (
    SOURCE_OF,
    UNIT_OF,
    Failed,
    Found,
    Missing,
    Outcome,
    Source,
    decode_throttled,
    parse_vcgencmd_throttled,
    read_filesystem,
    read_loadavg,
    read_meminfo,
    read_thermal,
    read_throttled_file,
    read_uptime,
)
from gateway.clock import Clock, epoch_ms
from gateway.errors import DeviceUnreachable
from gateway.readings import PointValue, Reading, reading_from_values

log = logging.getLogger(__name__)


class HostSystem:
    """The box as a bus. There is no connection, so entering and leaving it do nothing.

    ``root`` is where ``/sys`` and ``/proc`` are looked up (tests point it at a directory of
    their own files); ``vcgencmd`` is the command asked for the throttling flags when the
    firmware's sysfs file is absent (``None``: never ask), given ``vcgencmd_timeout`` seconds
    to answer (the firmware answers in milliseconds; longer means it is stuck).
    """

    def __init__(
        self,
        devices: Sequence[HostDeviceSettings],
        clock: Clock,
        *,
        root: Path = Path("/"),
        vcgencmd: str | None = "vcgencmd",
        vcgencmd_timeout: float = 2.0,
    ) -> None:
        # Looked up once: PATH does not change under a running daemon.
        command = shutil.which(vcgencmd) if vcgencmd else None
        asker = partial(_ask_vcgencmd, command, vcgencmd_timeout) if command else None
        self._devices = [HostPolledDevice(device, clock, root, asker) for device in devices]

    @property
    def devices(self) -> Sequence[HostPolledDevice]:
        return self._devices

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def open_host_bus(
    bus: HostBusSettings, devices: Sequence[HostDeviceSettings], clock: Clock
) -> HostSystem:
    return HostSystem(devices, clock)


class HostPolledDevice:
    """One set of host metrics. Each poll reads only the sources its metrics need."""

    def __init__(
        self,
        config: HostDeviceSettings,
        clock: Clock,
        root: Path,
        ask_vcgencmd: Callable[[], Awaitable[Outcome]] | None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._ask_vcgencmd = ask_vcgencmd
        readers: dict[Source, Callable[[], Outcome]] = {
            Source.THERMAL: lambda: read_thermal(root),
            Source.FILESYSTEM: lambda: read_filesystem(config.filesystem),
            Source.LOADAVG: lambda: read_loadavg(root),
            Source.UPTIME: lambda: read_uptime(root),
            Source.MEMINFO: lambda: read_meminfo(root),
            Source.THROTTLED: lambda: read_throttled_file(root),
        }
        needed = dict.fromkeys(SOURCE_OF[metric] for metric in config.metrics)
        self._readers = {source: readers[source] for source in needed}
        self._missing: frozenset[HostMetric] = frozenset()

    @property
    def name(self) -> str:
        return self._config.name

    async def read(self) -> Reading:
        read_at_ms = epoch_ms(self._clock)
        outcomes = await asyncio.to_thread(self._read_files)
        throttled = outcomes.get(Source.THROTTLED)
        if isinstance(throttled, Missing):
            outcomes[Source.THROTTLED] = (
                await self._ask_vcgencmd()
                if self._ask_vcgencmd
                else Missing(f"{throttled.why} and no vcgencmd")
            )
        values: list[PointValue] = []
        unread: dict[HostMetric, str] = {}
        missing: dict[HostMetric, str] = {}
        for metric in self._config.metrics:
            match outcomes[SOURCE_OF[metric]]:
                case Found(values=found):
                    values.append(PointValue(metric.value, found.get(metric), UNIT_OF.get(metric)))
                case Failed(why=why):
                    values.append(PointValue(metric.value, None, UNIT_OF.get(metric)))
                    unread[metric] = why
                case Missing(why=why):
                    missing[metric] = why
        self._note_missing(missing)
        if all(value.value is None for value in values):
            raise DeviceUnreachable(
                f"none of its metrics can be read: {_by_reason(missing | unread)}"
            )
        return reading_from_values(self.name, read_at_ms, tuple(values))

    def _read_files(self) -> dict[Source, Outcome]:
        return {source: read() for source, read in self._readers.items()}

    def _note_missing(self, missing: dict[HostMetric, str]) -> None:
        """Log which metrics this machine lacks when that changes, not on every poll."""
        now = frozenset(missing)
        if now == self._missing:
            return
        if now:
            log.info("%s: left out of its readings: %s", self.name, _by_reason(missing))
        else:
            log.info("%s: every metric is available again", self.name)
        self._missing = now


async def _ask_vcgencmd(command: str, timeout: float) -> Outcome:
    """The throttling flags from ``vcgencmd get_throttled``, without blocking the loop."""
    try:
        process = await asyncio.create_subprocess_exec(
            command,
            "get_throttled",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        return Failed(f"cannot run {command}: {exc.strerror}")
    try:
        async with asyncio.timeout(timeout):
            answer, _ = await process.communicate()
    except TimeoutError:
        return Failed(f"{command} get_throttled gave no answer within {timeout:g}s")
    finally:
        # Also when the poll is cancelled: no vcgencmd is left behind, stuck or not.
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.returncode != 0:
        return Failed(f"{command} get_throttled exited with status {process.returncode}")
    try:
        word = parse_vcgencmd_throttled(answer.decode("ascii", errors="replace"))
    except ValueError as exc:
        return Failed(f"{command} get_throttled: {exc}")
    return Found(decode_throttled(word))


def _by_reason(reasons: dict[HostMetric, str]) -> str:
    """``a, b (why); c (why)``: the eight throttling flags share one reason, said once."""
    grouped: dict[str, list[str]] = {}
    for metric, why in reasons.items():
        grouped.setdefault(why, []).append(metric.value)
    return "; ".join(f"{', '.join(metrics)} ({why})" for why, metrics in grouped.items())
