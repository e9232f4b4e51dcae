"""Config models owned by the host driver: the box itself as a bus, and its health metrics as a
device."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from gateway.config.fields import BusBase, DeviceBase, LocalPath


class HostMetric(StrEnum):
    """A health value of the gateway box. The name is the key in the reading's values."""

    SOC_TEMPERATURE = "soc_temperature"
    FILESYSTEM_FREE_BYTES = "filesystem_free_bytes"
    FILESYSTEM_FREE_PERCENT = "filesystem_free_percent"
    LOAD_1M = "load_1m"
    LOAD_5M = "load_5m"
    LOAD_15M = "load_15m"
    UPTIME_S = "uptime_s"
    MEMORY_AVAILABLE_BYTES = "memory_available_bytes"
    # Raspberry Pi firmware flags (get_throttled), 1 or 0.
    UNDER_VOLTAGE_NOW = "under_voltage_now"
    FREQUENCY_CAPPED_NOW = "frequency_capped_now"
    THROTTLED_NOW = "throttled_now"
    SOFT_TEMPERATURE_LIMIT_NOW = "soft_temperature_limit_now"
    UNDER_VOLTAGE_SINCE_BOOT = "under_voltage_since_boot"
    FREQUENCY_CAPPED_SINCE_BOOT = "frequency_capped_since_boot"
    THROTTLED_SINCE_BOOT = "throttled_since_boot"
    SOFT_TEMPERATURE_LIMIT_SINCE_BOOT = "soft_temperature_limit_since_boot"


class HostDevice(DeviceBase):
    """The gateway's own health, reported like a meter's readings. A metric this machine has no
    source for (no thermal zone, not a Raspberry Pi) is left out of the reading, never invented."""

    kind: ClassVar[str] = "host"

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

    type: Literal["host"]

    device_model = HostDevice
