"""What a running host bus holds of its config (see :mod:`gateway.settings`): the validated
values of :mod:`drivers.host.config`'s models, and the metric names both sides share."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from gateway.settings import BusSettings, DeviceSettings


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


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDeviceSettings(DeviceSettings):
    """A set of the box's health metrics, reported as one device's readings."""

    metrics: tuple[HostMetric, ...]
    #: The directory whose filesystem's free space is reported.
    filesystem: Path

    kind: ClassVar[str] = "host"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostBusSettings(BusSettings):
    """The gateway box itself: nothing beyond a name and its type."""
