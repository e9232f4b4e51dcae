"""Where each host metric comes from, read with blocking calls (the driver runs them in a
thread), and the pure decoding of what those files say.

A source answers with :class:`Found` values, :class:`Missing` when this machine has no such
source (its metrics are left out of readings) or :class:`Failed` when it has one that could not
be read this time (its metrics become null, so the reading is partial).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from drivers.host.settings import HostMetric


@dataclass(frozen=True, slots=True)
class Found:
    values: Mapping[HostMetric, float | int]


@dataclass(frozen=True, slots=True)
class Missing:
    why: str


@dataclass(frozen=True, slots=True)
class Failed:
    why: str


Outcome = Found | Missing | Failed


class Source(StrEnum):
    THERMAL = "thermal"
    FILESYSTEM = "filesystem"
    LOADAVG = "loadavg"
    UPTIME = "uptime"
    MEMINFO = "meminfo"
    THROTTLED = "throttled"


#: Which source gives each metric; one read of a source serves all of its metrics.
SOURCE_OF: dict[HostMetric, Source] = {
    HostMetric.SOC_TEMPERATURE: Source.THERMAL,
    HostMetric.FILESYSTEM_FREE_BYTES: Source.FILESYSTEM,
    HostMetric.FILESYSTEM_FREE_PERCENT: Source.FILESYSTEM,
    HostMetric.LOAD_1M: Source.LOADAVG,
    HostMetric.LOAD_5M: Source.LOADAVG,
    HostMetric.LOAD_15M: Source.LOADAVG,
    HostMetric.UPTIME_S: Source.UPTIME,
    HostMetric.MEMORY_AVAILABLE_BYTES: Source.MEMINFO,
    HostMetric.UNDER_VOLTAGE_NOW: Source.THROTTLED,
    HostMetric.FREQUENCY_CAPPED_NOW: Source.THROTTLED,
    HostMetric.THROTTLED_NOW: Source.THROTTLED,
    HostMetric.SOFT_TEMPERATURE_LIMIT_NOW: Source.THROTTLED,
    HostMetric.UNDER_VOLTAGE_SINCE_BOOT: Source.THROTTLED,
    HostMetric.FREQUENCY_CAPPED_SINCE_BOOT: Source.THROTTLED,
    HostMetric.THROTTLED_SINCE_BOOT: Source.THROTTLED,
    HostMetric.SOFT_TEMPERATURE_LIMIT_SINCE_BOOT: Source.THROTTLED,
}

UNIT_OF: dict[HostMetric, str | None] = {
    HostMetric.SOC_TEMPERATURE: "°C",
    HostMetric.FILESYSTEM_FREE_BYTES: "B",
    HostMetric.FILESYSTEM_FREE_PERCENT: "%",
    HostMetric.UPTIME_S: "s",
    HostMetric.MEMORY_AVAILABLE_BYTES: "B",
}

#: Bits of the Raspberry Pi firmware's get_throttled word (documented with ``vcgencmd``).
THROTTLED_BITS: dict[HostMetric, int] = {
    HostMetric.UNDER_VOLTAGE_NOW: 0,
    HostMetric.FREQUENCY_CAPPED_NOW: 1,
    HostMetric.THROTTLED_NOW: 2,
    HostMetric.SOFT_TEMPERATURE_LIMIT_NOW: 3,
    HostMetric.UNDER_VOLTAGE_SINCE_BOOT: 16,
    HostMetric.FREQUENCY_CAPPED_SINCE_BOOT: 17,
    HostMetric.THROTTLED_SINCE_BOOT: 18,
    HostMetric.SOFT_TEMPERATURE_LIMIT_SINCE_BOOT: 19,
}

THERMAL_DIR = Path("sys/class/thermal")
THROTTLED_FILE = Path("sys/devices/platform/soc/soc:firmware/get_throttled")
_SOC_ZONE_TYPES = ("cpu", "soc", "x86_pkg_temp")
_VCGENCMD_ANSWER = re.compile(r"throttled=(0x[0-9a-fA-F]+)")


def decode_throttled(word: int) -> dict[HostMetric, int]:
    """The flags of a get_throttled word, each 1 or 0."""
    return {metric: (word >> bit) & 1 for metric, bit in THROTTLED_BITS.items()}


def parse_vcgencmd_throttled(text: str) -> int:
    """The word in ``vcgencmd get_throttled``'s answer (``throttled=0x50005``)."""
    match = _VCGENCMD_ANSWER.search(text)
    if match is None:
        raise ValueError(f"unexpected answer {text.strip()!r}")
    return int(match.group(1), 16)


def read_thermal(root: Path) -> Outcome:
    """The SoC's temperature in °C: the zone whose type names the CPU or SoC, else zone 0."""
    try:
        numbered = {
            int(number): path
            for path in (root / THERMAL_DIR).glob("thermal_zone*")
            if (number := path.name.removeprefix("thermal_zone")).isdigit()
        }
    except OSError as exc:
        return Failed(f"cannot list /{THERMAL_DIR}: {exc.strerror}")
    zones = [numbered[n] for n in sorted(numbered) if (numbered[n] / "temp").exists()]
    if not zones:
        return Missing(f"no thermal zone under /{THERMAL_DIR}")
    zone = next(
        (z for z in zones if any(kind in _zone_type(z) for kind in _SOC_ZONE_TYPES)), zones[0]
    )
    return _parsed(zone / "temp", root, lambda text: {HostMetric.SOC_TEMPERATURE: int(text) / 1000})


def read_filesystem(directory: Path) -> Outcome:
    try:
        stats = os.statvfs(directory)
    except FileNotFoundError:
        return Missing(f"no directory {directory}")
    except OSError as exc:
        return Failed(f"cannot read the free space of {directory}: {exc.strerror}")
    if stats.f_blocks == 0:
        return Missing(f"the filesystem of {directory} reports no size")
    # f_bavail, not f_bfree: the blocks reserved for root are not space the buffer can use.
    return Found(
        {
            HostMetric.FILESYSTEM_FREE_BYTES: stats.f_bavail * stats.f_frsize,
            HostMetric.FILESYSTEM_FREE_PERCENT: round(100 * stats.f_bavail / stats.f_blocks, 2),
        }
    )


def read_loadavg(root: Path) -> Outcome:
    def parse(text: str) -> dict[HostMetric, float | int]:
        one, five, fifteen = (float(part) for part in text.split()[:3])
        return {HostMetric.LOAD_1M: one, HostMetric.LOAD_5M: five, HostMetric.LOAD_15M: fifteen}

    return _parsed(root / "proc/loadavg", root, parse)


def read_uptime(root: Path) -> Outcome:
    return _parsed(
        root / "proc/uptime", root, lambda text: {HostMetric.UPTIME_S: float(text.split()[0])}
    )


def read_meminfo(root: Path) -> Outcome:
    path = root / "proc/meminfo"
    outcome = _parsed(path, root, _mem_available)
    if isinstance(outcome, Found) and not outcome.values:
        # Kernels before 3.14 have no MemAvailable; an estimate from MemFree would mislead.
        return Missing("no MemAvailable in /proc/meminfo")
    return outcome


def read_throttled_file(root: Path) -> Outcome:
    """The flags from the firmware's sysfs file (hex, no ``0x``), on a Raspberry Pi kernel."""
    return _parsed(root / THROTTLED_FILE, root, lambda text: decode_throttled(int(text, 16)))


def _mem_available(text: str) -> dict[HostMetric, float | int]:
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "MemAvailable":
            # Always counted in "kB", which in /proc/meminfo are KiB.
            return {HostMetric.MEMORY_AVAILABLE_BYTES: int(rest.split()[0]) * 1024}
    return {}


def _zone_type(zone: Path) -> str:
    try:
        return (zone / "type").read_text(encoding="ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        return ""


def _parsed(
    path: Path, root: Path, parse: Callable[[str], Mapping[HostMetric, float | int]]
) -> Outcome:
    shown = f"/{path.relative_to(root)}"
    try:
        text = path.read_text(encoding="ascii")
    except (FileNotFoundError, NotADirectoryError):
        return Missing(f"no {shown}")
    except OSError as exc:
        # Present but unreadable (a sensor not ready answers EIO/ENODATA): a failure this time.
        return Failed(f"cannot read {shown}: {exc.strerror}")
    except UnicodeDecodeError:
        return Failed(f"{shown} is not text")
    try:
        return Found(parse(text.strip()))
    except (ValueError, IndexError):
        return Failed(f"cannot make sense of {shown}: {text.strip()[:40]!r}")
