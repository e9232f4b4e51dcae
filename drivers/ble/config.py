"""Config models owned by the BLE driver: an adapter as a bus, and its sensors as devices.

A device is either an *advertiser* (its readings come from the advertisements it broadcasts,
decoded by the parser of its ``format``) or a *GATT* device (it has ``points``: characteristics
read, or subscribed to, over a connection on its interval). Bind keys of encrypted formats come
from a file or a systemd credential, never from the YAML: a config file gets pasted into
tickets and chats.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from drivers.ble.settings import (
    BASE_UUID,
    KEYED_FORMATS,
    BleBusSettings,
    BleDeviceSettings,
    Format,
    GattMode,
    GattPointSettings,
    GattType,
    Sampling,
    ScanningMode,
    advert_format_of,
)
from drivers.modbus.settings import ByteOrder
from gateway.config.fields import (
    AnswerTimeout,
    BackoffCap,
    BusBase,
    DeviceBase,
    Duration,
    DurationBounds,
    LocalPath,
    Name,
    StrictModel,
)

_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_UUID16 = re.compile(r"(?:0x)?([0-9A-Fa-f]{4})")
_UUID128 = re.compile(
    r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
)


def check_mac(text: str) -> str:
    """A Bluetooth device address as BlueZ writes it (``A4:C1:38:12:34:56``)."""
    if not _MAC.fullmatch(text):
        raise ValueError(
            f"{text!r} is not a Bluetooth address; write six hex bytes with ':', like "
            "A4:C1:38:12:34:56 (`fieldgate scan ble` lists those in range)"
        )
    return text.upper()


def _uuid_is_text(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        # pydantic reports a ValueError (not a TypeError) with the key's path and line.
        raise ValueError(  # noqa: TRY004
            f"{value} is a number to YAML (0x2A6F and 2902 are read as numbers); write the "
            "UUID in quotes, like '2a6f'"
        )
    return value


def check_uuid(text: str) -> str:
    """A characteristic UUID: 16-bit (``2a6e``, ``0x2A6E``) or 128-bit, as the full lowercase
    128-bit form bleak reports."""
    if match := _UUID16.fullmatch(text):
        return BASE_UUID.format(match.group(1).lower())
    if _UUID128.fullmatch(text):
        return text.lower()
    raise ValueError(
        f"{text!r} is not a characteristic UUID; write 16 bits (2a6e) or 128 bits "
        "(0000fff1-0000-1000-8000-00805f9b34fb)"
    )


Mac = Annotated[
    str,
    AfterValidator(check_mac),
    Field(
        json_schema_extra={"pattern": r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"},
        description="Bluetooth device address, like A4:C1:38:12:34:56",
    ),
]
CharacteristicUuid = Annotated[
    str,
    BeforeValidator(_uuid_is_text),
    AfterValidator(check_uuid),
    Field(
        json_schema_extra={
            "pattern": r"^((0x)?[0-9A-Fa-f]{4}|[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12})$"
        },
        description="Characteristic UUID: 16-bit (2a6e) or 128-bit",
    ),
]


class GattPoint(StrictModel):
    """One value of a GATT device: a characteristic and how to decode its bytes."""

    # Typed by StrictModel: annotated here, ``type`` would be the field below, not the builtin.
    settings = GattPointSettings

    name: Name = Field(description="Unique within the device; the key in the payload's values")
    characteristic: CharacteristicUuid
    type: GattType = Field(description="Encoding of the value")
    byte_order: ByteOrder = Field(
        default=ByteOrder.LITTLE,
        description="little (the Bluetooth convention, the default) or big",
    )
    offset_bytes: int = Field(
        default=0, ge=0, le=511, description="Where the value starts in the characteristic"
    )
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = Field(default=0.0, description="value = raw * scale + offset")
    unit: str | None = Field(default=None, max_length=32, description="Engineering unit, e.g. °C")
    mode: GattMode = Field(
        default=GattMode.READ,
        description="read: read it each poll; notify: subscribe and take the first notification",
    )

    @model_validator(mode="after")
    def _text_unscaled(self) -> GattPoint:
        if self.type is GattType.STRING and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("a string point takes no scale or offset")
        return self


#: How long a sensor may stay silent before it is reported missing.
StaleAfter = Annotated[Duration, DurationBounds(at_least=1.0, at_most=86400.0)]


class BleDevice(DeviceBase):
    """A BLE sensor: an advertiser decoded by ``format``, or a GATT device with ``points``.
    ``interval`` is how often a reading is written (advertisers: the sampling interval; GATT:
    how often to connect and read)."""

    address: Mac | None = Field(
        default=None, description="Bluetooth address (`fieldgate scan ble` lists them)"
    )
    name_pattern: str | None = Field(
        default=None,
        min_length=1,
        max_length=248,
        description=(
            "Instead of an address: the advertised name, with * and ? as wildcards "
            "(ATC_* ); the first device in range that matches is taken"
        ),
    )
    format: Format | None = Field(
        default=None,
        description="Advertisement format (default auto); not with points (GATT)",
    )
    sampling: Sampling = Field(
        default=Sampling.LAST,
        description="last: the newest value in each interval; mean: the mean over it",
    )
    stale_after: StaleAfter = Field(
        default=300.0,
        description=(
            "Not heard for this long: the sensor is reported missing (once), and its return "
            "once it is heard again"
        ),
    )
    bind_key_file: LocalPath | None = Field(
        default=None,
        description="A file holding the 32-hex-digit bind key of an encrypted sensor",
    )
    bind_key_credential: Name | None = Field(
        default=None,
        description="Name of a systemd credential (LoadCredential=) holding the bind key",
    )
    points: list[GattPoint] = Field(
        default_factory=list,
        max_length=64,
        description="GATT characteristics to read on the interval (a GATT device)",
    )

    settings: ClassVar[type[Any]] = BleDeviceSettings

    @property
    def advert_format(self) -> Format:
        return advert_format_of(self.format)

    @model_validator(mode="after")
    def _consistent(self) -> BleDevice:
        if (self.address is None) == (self.name_pattern is None):
            raise ValueError(
                "give the sensor's address (or, instead, name_pattern); `fieldgate scan ble` "
                "lists the sensors in range"
            )
        if self.bind_key_file is not None and self.bind_key_credential is not None:
            raise ValueError("give bind_key_file or bind_key_credential, not both")
        keyed = self.bind_key_file is not None or self.bind_key_credential is not None
        if self.points:
            if self.format is not None:
                raise ValueError("a GATT device (with points) takes no format")
            if keyed:
                raise ValueError("a GATT device (with points) takes no bind key")
            if self.address is None:
                raise ValueError("a GATT device (with points) needs its address")
            seen: set[str] = set()
            for point in self.points:
                if point.name in seen:
                    raise ValueError(f"point name {point.name!r} is used twice")
                seen.add(point.name)
        elif keyed and self.advert_format not in KEYED_FORMATS:
            raise ValueError(
                f"format {self.advert_format.value} is never encrypted: remove the bind key"
            )
        return self


class BleBus(BusBase):
    """A Bluetooth adapter, through BlueZ (bleak's Linux backend)."""

    settings: ClassVar[type[Any]] = BleBusSettings

    type: Literal["ble"]
    adapter: str = Field(
        default="hci0",
        pattern=r"^hci[0-9]{1,3}$",
        description="The adapter, as `hciconfig`/`bluetoothctl list` name it",
    )
    scanning: ScanningMode = Field(
        default=ScanningMode.ACTIVE,
        description="active (asks for scan responses) or passive (only listens; BlueZ 5.56+)",
    )
    max_connections: int = Field(
        default=3,
        ge=1,
        le=7,
        description=(
            "GATT connections at once on this adapter (controllers have 5-7 slots); the "
            "other GATT polls wait their turn"
        ),
    )
    connect_timeout: AnswerTimeout = Field(
        default=10.0,
        description="A GATT connect (or read) that takes longer is abandoned",
    )
    retry_max: BackoffCap = Field(
        default=60.0,
        description="Longest wait between attempts to start scanning when the adapter fails",
    )

    device_model = BleDevice

    def cannot_reach(self, device: DeviceBase) -> str | None:
        # BlueZ's advertisement monitor passes on only advertisements matching the decoded
        # formats' patterns: a GATT device is never heard, so it could never be connected.
        if (
            self.scanning is ScanningMode.PASSIVE
            and isinstance(device, BleDevice)
            and device.points
        ):
            return (
                f"bus {self.name!r} scans passively, which never hears a GATT device (only "
                "advertisements in the formats fieldgate decodes); set `scanning: active` on "
                "the bus, or put GATT devices on an active bus"
            )
        return None
