"""Building blocks of the config models: strict base classes and the quantities people write
(``10s``, ``512MB``, host names, paths) as typed fields with their JSON Schema.

Every type here is bounded to what the code, the protocols and the OS behind it accept: a value
that ``fieldgate check`` accepts must not crash ``fieldgate run`` or make it silently idle."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from gateway.quantities import (
    DURATION_PATTERN,
    MAX_DURATION,
    MAX_SIZE,
    MIN_DURATION,
    SIZE_PATTERN,
    brief,
    format_duration,
    parse_duration,
    parse_size,
)
from gateway.readings import DeviceInfo
from gateway.settings import BusSettings, DeviceSettings

#: A duration in seconds, written in YAML as ``10s``, ``500ms``, ``5m``, ``1h``, ``1d``; finite
#: and between :data:`MIN_DURATION` and :data:`MAX_DURATION`. A field narrows it with
#: :class:`DurationBounds` where a protocol or the code sets a tighter limit.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "minimum": MIN_DURATION, "maximum": MAX_DURATION},
            ],
            "description": "A duration: 10s, 500ms, 5m, 1h, 1d, 1h30m (or seconds as a number)",
        }
    ),
]


def parse_period_or_off(text: object) -> float:
    """A period from 1 s to a day as :func:`parse_duration` reads it, or 0 (``0``, ``0s``)
    for none. (Not ``off``: YAML reads that as false.)"""
    if text in (0, "0", "0s") and not isinstance(text, bool):
        return 0.0
    seconds = parse_duration(text)
    if not 1.0 <= seconds <= 86400.0:
        raise ValueError(
            f"{brief(text)} is outside 1s to 1d, the periods allowed here (0 for none)"
        )
    return seconds


#: How often something periodic happens, or 0 (``0``, ``0s``) for never.
PeriodOrOff = Annotated[
    float,
    BeforeValidator(parse_period_or_off),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"enum": [0, "0s", "0"]},
                {"type": "number", "minimum": 1.0, "maximum": 86400.0},
            ],
            "description": "A period (10s, 5m, 1h; at least 1s, at most 1d), or 0 for none",
        }
    ),
]


@dataclass(frozen=True, slots=True)
class DurationBounds:
    """``Annotated[Duration, DurationBounds(at_least=1.0, at_most=65535.0)]``: a duration
    narrowed for one use. The error names the value as written and the range in the units
    people write; the JSON Schema carries the range for editors."""

    at_least: float = MIN_DURATION
    at_most: float = MAX_DURATION
    #: Why the range is what it is, when that is not obvious (a protocol's limit).
    reason: str = ""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = dict(handler(schema))
        json_schema["anyOf"] = [
            {**branch, "minimum": self.at_least, "maximum": self.at_most}
            if branch.get("type") == "number"
            else branch
            for branch in json_schema.get("anyOf", [])
        ]
        return json_schema

    def _check(self, value: Any, inner: core_schema.ValidatorFunctionWrapHandler) -> float:
        seconds: float = inner(value)
        if self.at_least <= seconds <= self.at_most:
            return seconds
        what = "longer" if seconds > self.at_most else "shorter"
        why = f"; {self.reason}" if self.reason else ""
        raise ValueError(
            f"{brief(value)} is {what} than allowed here: from {_limit(self.at_least)} to "
            f"{_limit(self.at_most)}{why}"
        )


def _limit(seconds: float) -> str:
    """A limit as people write it, and in seconds when that takes several units to say."""
    text = format_duration(seconds)
    return f"{text} ({seconds:g}s)" if len(re.findall("[a-z]+", text)) > 1 else text


#: How often a device is polled. Below 100ms polls crowd the bus and commit a row each; above a
#: day a device looks configured but hardly polls (and 1e300 would never poll at all).
Interval = Annotated[Duration, DurationBounds(at_least=0.1, at_most=86400.0)]
#: How long to wait for one answer of a device: longer than a minute is no answer.
AnswerTimeout = Annotated[Duration, DurationBounds(at_most=60.0)]
#: The cap of a reconnect backoff: beyond an hour, a fixed line comes back too late to notice.
BackoffCap = Annotated[Duration, DurationBounds(at_most=3600.0)]

#: A size in bytes, written in YAML as ``512MB``, ``2GiB``.
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": SIZE_PATTERN},
                {"type": "integer", "minimum": 1, "maximum": MAX_SIZE},
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


#: RFC 1123 host name labels: letters, digits and inner hyphens, 1 to 63 characters each.
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")
#: The longest name DNS carries (RFC 1035: 255 bytes on the wire, 253 characters written).
_HOST_NAME_MAX = 253


def check_host(text: str) -> str:
    """An IP address, or a host name as RFC 1123 allows: what the resolver (``getaddrinfo``,
    which refuses a label over 63 characters with an exception) and DNS accept."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        return text
    allowed = (
        "write an IP address, or a host name of letters, digits and '-' in labels separated "
        f"by '.', each label at most 63 characters and the name at most {_HOST_NAME_MAX}"
    )
    if len(text) > _HOST_NAME_MAX or not _HOST_NAME.fullmatch(text):
        raise ValueError(f"{brief(text)} is not a host name or IP address; {allowed}")
    if text.rsplit(".", 1)[-1].isdigit():
        # No top-level domain is all digits (RFC 3696, 2): this is a mistyped IPv4 address.
        raise ValueError(f"{brief(text)} is not a valid IPv4 address")
    return text


#: A host to connect to: an IP address or an RFC 1123 host name.
HostName = Annotated[
    str,
    AfterValidator(check_host),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "ipv4"},
                {"type": "string", "format": "ipv6"},
                {
                    "type": "string",
                    "maxLength": _HOST_NAME_MAX,
                    "pattern": rf"^{_HOST_LABEL}(\.{_HOST_LABEL})*$",
                },
            ],
            "description": "IP address or host name (labels of letters, digits and '-')",
        }
    ),
]


def check_ip_address(text: str) -> str:
    """An IPv4 or IPv6 address, as ``ipaddress`` reads it (a zone like ``%eth0`` included)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{brief(text)} is not an IP address, like 127.0.0.1 or ::1") from None
    return text


#: An address of this machine to listen on: an IP address, never a name to look up.
IpAddress = Annotated[
    str,
    AfterValidator(check_ip_address),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}],
            "description": "IP address",
        }
    ),
]

#: The longest topic prefix. With a gateway id and device names of at most 64 characters, the
#: longest topic (``<prefix>/<gateway>/devices/<device>/reading``) is 402 bytes: far inside
#: MQTT's 65535-byte limit on a topic, and short enough to read in a broker's log.
TOPIC_PREFIX_MAX = 256
_TOPIC_LEVEL = r"[A-Za-z0-9_.-]+"
_TOPIC_PREFIX = re.compile(rf"{_TOPIC_LEVEL}(?:/{_TOPIC_LEVEL})*")


def check_topic_prefix(text: str) -> str:
    """An allow-list, not a list of what MQTT forbids: no wildcard, NUL, ``$`` (the broker's
    own topics), empty level or control character can get through."""
    if len(text) > TOPIC_PREFIX_MAX or not _TOPIC_PREFIX.fullmatch(text):
        raise ValueError(
            f"{brief(text)} is not a topic prefix; write one or more levels of letters, digits, "
            f"'_', '-' and '.', separated by '/', at most {TOPIC_PREFIX_MAX} characters"
        )
    return text


#: The first level(s) of every topic the gateway publishes.
TopicPrefix = Annotated[
    str,
    AfterValidator(check_topic_prefix),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": TOPIC_PREFIX_MAX,
            "pattern": rf"^{_TOPIC_LEVEL}(/{_TOPIC_LEVEL})*$",
            "description": "Topic levels of letters, digits, '_', '-', '.', separated by '/'",
        }
    ),
]

#: The longest path the kernel takes (PATH_MAX, 4096 bytes with the final NUL) ...
_PATH_MAX = 4095
#: ... and the longest name of one file or directory in it (NAME_MAX).
_NAME_MAX = 255
#: SQLite's unix VFS refuses a full path over 512 bytes, with "-journal" or "-wal" appended:
#: 400 leaves room for those and for the working directory of a relative path.
_SQLITE_PATH_MAX = 400


def _path_checker(max_bytes: int) -> Callable[[object], object]:
    def check(value: object) -> object:
        if isinstance(value, PurePath):
            value = str(value)
        if not isinstance(value, str):
            return value  # not text: the Path validator says so
        try:
            encoded = os.fsencode(value)
        except UnicodeEncodeError:
            raise ValueError(f"{brief(value)} cannot be a file name on this system") from None
        if not value:
            raise ValueError("a path cannot be empty")
        if b"\0" in encoded:
            raise ValueError(f"{brief(value)} contains a NUL character, which no path can")
        if len(encoded) > max_bytes:
            raise ValueError(
                f"{brief(value)} is {len(encoded)} bytes long; at most {max_bytes} bytes here"
            )
        if any(len(part) > _NAME_MAX for part in encoded.split(b"/")):
            raise ValueError(
                f"{brief(value)} has a name longer than {_NAME_MAX} bytes between its '/'s"
            )
        return value

    return check


def _path_schema(max_bytes: int, description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": max_bytes,
            "pattern": "^[^\\x00]+$",
            "description": description,
        }
    )


#: A file or directory of this machine: no NUL, within the kernel's PATH_MAX and NAME_MAX.
LocalPath = Annotated[
    Path,
    BeforeValidator(_path_checker(_PATH_MAX)),
    _path_schema(_PATH_MAX, "A path on this machine"),
]
#: An SQLite database file: a :data:`LocalPath` within SQLite's own, shorter, limit.
DatabasePath = Annotated[
    Path,
    BeforeValidator(_path_checker(_SQLITE_PATH_MAX)),
    _path_schema(_SQLITE_PATH_MAX, "An SQLite database file on this machine"),
]


class StrictModel(BaseModel):
    """Unknown keys are errors and nothing is coerced silently: a typo must not be ignored.

    Every model names its ``settings``: the plain frozen dataclass of the same fields that the
    running gateway holds instead of the model (see :mod:`gateway.settings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    settings: ClassVar[type[Any]]


#: The validation context's key for the table of :func:`shared`.
_SHARED = "shared models"


def sharing_context() -> dict[str, Any]:
    """The validation context under which :func:`shared` gives equal models as one object:
    one table for one config, dropped with the context once it is validated."""
    return {_SHARED: {}}


_Model = TypeVar("_Model", bound=StrictModel)


def shared(model: _Model, info: ValidationInfo) -> _Model:
    """``model``, or an equal one validated before it under the same context (the models are
    frozen, so nobody can tell them apart): 100 identical meters with their 30 points listed
    hold 30 point models instead of 3 000, and the settings tree handed to the running gateway
    (gateway.config.handover) holds each of them once, so the gateway's settings do too."""
    table = info.context.get(_SHARED) if isinstance(info.context, dict) else None
    if not isinstance(table, dict):
        return model
    key = (type(model), model.model_dump_json(), frozenset(model.model_fields_set))
    found: _Model = table.setdefault(key, model)
    return found


class DeviceBase(StrictModel):
    """What every device has, whatever its protocol: the core schedules by these fields."""

    name: Name = Field(description="Unique device name; the last level of its MQTT topic")
    bus: Name = Field(description="Name of the bus (in `buses`) this device is reached through")
    interval: Interval = Field(
        default=10.0, description="How often to poll; polls align to the wall clock"
    )

    settings: ClassVar[type[Any]] = DeviceSettings

    def info(self) -> DeviceInfo:
        """Who this device is, for the fleet, as the running gateway describes it (its
        settings' ``info()``), for config-side readers (``check``, tests)."""
        # Imported here: the handover reads the whole config's models, this module among them.
        from gateway.config.handover import settings_of  # noqa: PLC0415

        described: DeviceInfo = settings_of(self).info()
        return described


class BusBase(StrictModel):
    """What every bus has: a unique name that devices refer to."""

    name: Name = Field(description="Unique bus name; devices refer to it with `bus:`")

    settings: ClassVar[type[Any]] = BusSettings

    #: The device model this kind of bus reaches; the config checks every device against it.
    device_model: ClassVar[type[DeviceBase]] = DeviceBase

    def cannot_reach(self, device: DeviceBase) -> str | None:
        """Why this bus, as configured, can never reach ``device`` (one of its kind), for
        ``check`` to refuse it at the device's ``bus:`` line; None if it can. Drivers whose
        bus settings rule out some devices override it."""
        return None
