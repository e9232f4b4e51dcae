"""Building blocks of the config models: strict base classes and the quantities people write
(``10s``, ``512MB``) as typed fields with their JSON Schema."""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)")
_SIZE_UNITS = {
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_duration(text: object) -> float:
    """Seconds from ``"10s"``, ``"500ms"``, ``"1h30m"`` or a plain number of seconds."""
    if isinstance(text, bool):
        raise ValueError("a duration is a number with a unit, like 10s, 500ms, 5m, 1h or 1d")
    if isinstance(text, int | float):
        seconds = float(text)
    elif isinstance(text, str):
        compact = text.replace(" ", "")
        parts = _DURATION_PART.findall(compact)
        if not parts or "".join(n + u for n, u in parts) != compact:
            raise ValueError(
                f"{text!r} is not a duration; write a number with a unit, like 10s, 500ms, 5m, "
                "1h, 1d or 1h30m"
            )
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError("a duration is a number with a unit, like 10s, 500ms, 5m, 1h or 1d")
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    return seconds


def parse_size(text: object) -> int:
    """Bytes from ``"512MB"``, ``"1GiB"`` or a plain number of bytes."""
    if isinstance(text, bool):
        raise ValueError("a size is a number with a unit, like 512MB or 2GiB")
    if isinstance(text, int):
        size = text
    elif isinstance(text, str) and (match := _SIZE.fullmatch(text.strip())):
        size = int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    else:
        raise ValueError(
            f"{text!r} is not a size; write a number with a unit, like 512MB, 2GB or 1GiB"
        )
    if size <= 0:
        raise ValueError(f"{text!r}: a size must be larger than zero")
    return size


#: A duration in seconds, written in YAML as ``10s``, ``500ms``, ``5m``, ``1h``, ``1d``.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": "A duration: 10s, 500ms, 5m, 1h, 1d, 1h30m (or seconds as a number)",
        }
    ),
]

#: A size in bytes, written in YAML as ``512MB``, ``2GiB``.
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "pattern": r"^\d+(\.\d+)?\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
                },
                {"type": "integer", "exclusiveMinimum": 0},
            ],
            "description": "A size: 512MB, 2GB, 1GiB (or bytes as a number)",
        }
    ),
]

#: A name that is safe as one MQTT topic level and readable in a log line.
Name = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Letters, digits, '_', '-', '.'; no spaces, '/', '+' or '#' (used in topics)",
    ),
]


class StrictModel(BaseModel):
    """Unknown keys are errors and nothing is coerced silently: a typo must not be ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class DeviceBase(StrictModel):
    """What every device has, whatever its protocol: the core schedules by these fields."""

    name: Name = Field(description="Unique device name; the last level of its MQTT topic")
    bus: Name = Field(description="Name of the bus (in `buses`) this device is reached through")
    interval: Duration = Field(
        default=10.0, description="How often to poll; polls align to the wall clock"
    )


class BusBase(StrictModel):
    """What every bus has: a unique name that devices refer to."""

    name: Name = Field(description="Unique bus name; devices refer to it with `bus:`")

    #: The device model this kind of bus reaches; the config checks every device against it.
    device_model: ClassVar[type[DeviceBase]] = DeviceBase
