"""The data that crosses every boundary of the data path: driver -> buffer -> uplink."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from math import isfinite
from operator import attrgetter


class Quality(StrEnum):
    """How much of a device poll can be trusted, as the fleet side sees it."""

    GOOD = "good"
    #: Some points could not be read or decoded to a finite number; they are sent as null.
    PARTIAL = "partial"


@dataclass(frozen=True, slots=True)
class PointValue:
    """One decoded, scaled value of one point, with its engineering unit. A value is a number,
    or text (a meter's serial number or model string, the label of an enumerated state)."""

    name: str
    value: float | int | str | None
    unit: str | None = None


#: A reading's points as (name, unit), in its order: what never changes from one reading of a
#: device to the next. The wire's description says it once (its layout id); the buffer's
#: ``layouts`` table keeps it once, and each row only its values.
Layout = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class Unsynchronised:
    """A reading taken while the wall clock could not be believed (see
    :mod:`gateway.timekeeping`): its moment on the monotonic clock of boot ``boot_id``, from
    which its wall time is worked out once the clock synchronises in that boot."""

    boot_id: str
    monotonic_ms: int


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything one poll of one device produced.

    ``read_at_ms`` is the wall-clock time (UTC, epoch milliseconds) at which the meter answered,
    not the time the reading is stored or sent.
    """

    device: str
    read_at_ms: int
    values: tuple[PointValue, ...]
    quality: Quality = Quality.GOOD
    #: Set while the wall clock is not synchronised: ``read_at_ms`` is then only its guess.
    unsynchronised: Unsynchronised | None = None

    @property
    def read_at(self) -> datetime:
        return datetime.fromtimestamp(self.read_at_ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class BufferedReading:
    """A reading as it sits in the buffer, with the per-gateway sequence number it was given."""

    seq: int
    reading: Reading


def reading_from_values(device: str, read_at_ms: int, values: tuple[PointValue, ...]) -> Reading:
    """Build a reading, marking it partial when any value is missing or not a finite number.

    JSON has no NaN or infinity, and a meter that reports NaN means "no value": both become null.
    """
    if _all_values(values):
        return Reading(device=device, read_at_ms=read_at_ms, values=values)
    cleaned = tuple(
        point if _is_value(point.value) else PointValue(point.name, None, point.unit)
        for point in values
    )
    return Reading(device=device, read_at_ms=read_at_ms, values=cleaned, quality=Quality.PARTIAL)


_value_of = attrgetter("value")


def _all_values(values: tuple[PointValue, ...]) -> bool:
    """Whether every value is a number (finite) or text. Every point of every poll comes
    through here: the usual reading, all numbers, is told by one sum in C (finite only if
    every term is); text, None, a sum that overflows or is not finite are looked at one by
    one."""
    try:
        if isfinite(sum(map(_value_of, values))):
            return True
    except (TypeError, OverflowError):
        pass
    return all(_is_value(point.value) for point in values)


def _is_value(value: float | int | str | None) -> bool:
    return value is not None and (not isinstance(value, float) or math.isfinite(value))


@dataclass(frozen=True, slots=True)
class PointInfo:
    """What the config says of one point, for the fleet's description of a device."""

    name: str
    unit: str | None = None
    #: Remote commands may write it, within ``minimum``..``maximum`` (both given when writable).
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    #: Its value is text (a string or an enum's label), not a number.
    text: bool = False
    #: What it measures, in Home Assistant's words (temperature, humidity, battery ...), where
    #: the config or the device says so.
    device_class: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Who a device is, from the config: what never changes while a config runs, so it goes
    upstream once (the birth, a device's retained description), not in every reading."""

    name: str
    bus: str
    #: The kind of device its bus reaches ("modbus", "host").
    kind: str
    template: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    #: electricity, heat, water, gas, pv: what a template says the meter measures.
    medium: str | None = None
    #: The configured points, where the config lists them (a host device's depend on the box).
    points: tuple[PointInfo, ...] = ()
    #: The name the device gives itself (a BLE parser's "Ruuvi 3A5F"), once it was heard.
    device_name: str | None = None

    def identified(self, identity: DeviceIdentity) -> DeviceInfo:
        """This description completed by what the device says of itself: what the config
        leaves out is taken from ``identity`` (the config is what the user said, so it wins);
        a point the config does not list joins with the unit and class the device gave."""
        configured = {point.name: point for point in self.points}
        points = list(self.points)
        for told in identity.points:
            known = configured.get(told.name)
            if known is None:
                points.append(told)
            elif known.device_class is None and told.device_class is not None:
                points[points.index(known)] = replace(known, device_class=told.device_class)
        return replace(
            self,
            manufacturer=self.manufacturer or identity.manufacturer,
            model=self.model or identity.model,
            device_name=self.device_name or identity.device_name,
            points=tuple(points),
        )


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What a device says of itself once heard, as its driver reports it at run time
    (:meth:`gateway.driver.ReadingSink.describe`): a BLE parser's manufacturer, model and name,
    and the unit and device class of each point it decoded. It completes the config's
    :class:`DeviceInfo` (:meth:`DeviceInfo.identified`), never overrides it."""

    manufacturer: str | None = None
    model: str | None = None
    device_name: str | None = None
    points: tuple[PointInfo, ...] = ()
