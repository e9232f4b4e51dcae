"""Config models owned by the host driver: the box itself as a bus, and its health metrics as a
device."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from drivers.host.settings import HostBusSettings, HostDeviceSettings, HostMetric
from gateway.config.fields import BusBase, DeviceBase, LocalPath

__all__ = ["HostBus", "HostDevice", "HostMetric"]


class HostDevice(DeviceBase):
    """The gateway's own health, reported like a meter's readings. A metric this machine has no
    source for (no thermal zone, not a Raspberry Pi) is left out of the reading, never invented."""

    settings: ClassVar[type[Any]] = HostDeviceSettings

    metrics: list[HostMetric] = Field(
        default=list(HostMetric),
        min_length=1,
        description="The values to report; default all. Those this machine lacks are left out",
    )
    filesystem: LocalPath = Field(
        default=Path("/var/lib/fieldgate"),
        description=(
            "A directory whose filesystem's free space is reported: make it the buffer's "
            "directory (the default is the buffer's default), so a filling SD card shows"
        ),
    )

    @field_validator("metrics")
    @classmethod
    def _metrics_unique(cls, metrics: list[HostMetric]) -> list[HostMetric]:
        seen: set[HostMetric] = set()
        for metric in metrics:
            if metric in seen:
                raise ValueError(f"metric {metric.value!r} is listed twice; list it once")
            seen.add(metric)
        return metrics


class HostBus(BusBase):
    """The gateway box itself: no wire, no address. One is enough for any number of host
    devices (one per filesystem to watch, say)."""

    settings: ClassVar[type[Any]] = HostBusSettings

    type: Literal["host"]

    device_model = HostDevice
