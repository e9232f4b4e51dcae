"""What a running BLE bus holds of its config (see :mod:`gateway.settings`): the validated values
of :mod:`drivers.ble.config`'s models, and the enums and tables both sides share.

Bind keys are not here: a device's settings say only where its key is (a file, a systemd
credential), and the driver reads it when the bus opens (:mod:`drivers.ble.keys`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from drivers.modbus.settings import ByteOrder
from gateway.readings import DeviceInfo, PointInfo
from gateway.settings import BusSettings, DeviceSettings

#: The Bluetooth base UUID: a 16-bit UUID ``xxxx`` is ``0000xxxx-0000-1000-8000-00805f9b34fb``.
BASE_UUID = "0000{}-0000-1000-8000-00805f9b34fb"
#: What a standard characteristic measures (Bluetooth SIG assigned numbers, GATT
#: Specification Supplement), in Home Assistant's device classes: the fleet's description
#: tells it, and Home Assistant's discovery uses it where it takes the point's unit with it.
CHARACTERISTIC_CLASSES = {
    BASE_UUID.format("2a6e"): "temperature",  # Temperature (0.01 °C)
    BASE_UUID.format("2a1f"): "temperature",  # Temperature Celsius (0.1 °C)
    BASE_UUID.format("2a6f"): "humidity",  # Humidity (0.01 %)
    BASE_UUID.format("2a19"): "battery",  # Battery Level (%)
    BASE_UUID.format("2a6d"): "pressure",  # Pressure (0.1 Pa)
}


class ScanningMode(StrEnum):
    """Active scanning asks every device for its scan response (more radio, more battery of
    the sensors, and some formats need it); passive only listens (BlueZ 5.56+ with its
    experimental advertisement monitor)."""

    ACTIVE = "active"
    PASSIVE = "passive"


class Format(StrEnum):
    """Which parser decodes a sensor's advertisements."""

    #: Try every parser on the first advertisements and keep the one that decodes them.
    AUTO = "auto"
    BTHOME = "bthome"
    RUUVI = "ruuvi"
    #: Xiaomi's MiBeacon (plain and encrypted).
    XIAOMI = "xiaomi"
    #: The atc1441 and pvvx custom formats of the ATC_MiThermometer firmware (LYWSD03MMC ...),
    #: and pvvx's encrypted ones.
    ATC = "atc"
    GOVEE = "govee"
    THERMOPRO = "thermopro"


#: Formats that may be encrypted with a bind key.
KEYED_FORMATS = frozenset({Format.AUTO, Format.BTHOME, Format.XIAOMI, Format.ATC})


class Sampling(StrEnum):
    """What one reading per interval carries of the advertisements heard in it."""

    #: The newest value of each measurement.
    LAST = "last"
    #: The mean of each numeric measurement (text: the newest).
    MEAN = "mean"


class GattType(StrEnum):
    """How a characteristic's bytes encode its value: Modbus points' type names, plus the one-
    byte integers characteristics often hold (battery level 0x2A19 is a u8)."""

    U8 = "u8"
    I8 = "i8"
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    #: UTF-8 text (the device name 0x2A00, a firmware revision 0x2A26).
    STRING = "string"


class GattMode(StrEnum):
    #: Read the characteristic (ATT read) once per poll.
    READ = "read"
    #: Subscribe and take the first notification (for values the device only pushes).
    NOTIFY = "notify"


def advert_format_of(format_: Format | None) -> Format:
    """The parser of an advertiser whose config names ``format_`` (none: try them all)."""
    return format_ or Format.AUTO


@dataclass(frozen=True, slots=True, kw_only=True)
class GattPointSettings:
    """One value of a GATT device: a characteristic (its full lowercase 128-bit UUID) and how
    to decode its bytes (``value = raw * scale + offset``)."""

    name: str
    characteristic: str
    type: GattType
    byte_order: ByteOrder
    offset_bytes: int
    scale: float
    offset: float
    unit: str | None
    mode: GattMode


@dataclass(frozen=True, slots=True, kw_only=True)
class BleDeviceSettings(DeviceSettings):
    """A BLE sensor: an advertiser (no ``points``) decoded by its format, or a GATT device
    whose ``points`` are read on its interval. Exactly one of ``address`` and ``name_pattern``
    is set; a GATT device has its address."""

    address: str | None
    name_pattern: str | None
    format: Format | None
    sampling: Sampling
    #: Seconds without a word from the sensor before it is reported missing.
    stale_after: float
    bind_key_file: Path | None
    bind_key_credential: str | None
    points: tuple[GattPointSettings, ...]

    kind: ClassVar[str] = "ble"

    def info(self) -> DeviceInfo:
        # An advertiser's points are what its sensor sends (known once it is heard); a GATT
        # device's are its configured characteristics, which say what they measure.
        return DeviceInfo(
            self.name,
            self.bus,
            self.kind,
            points=tuple(
                PointInfo(
                    point.name,
                    point.unit,
                    text=point.type is GattType.STRING,
                    device_class=CHARACTERISTIC_CLASSES.get(point.characteristic),
                )
                for point in self.points
            ),
        )

    @property
    def advert_format(self) -> Format:
        return advert_format_of(self.format)

    @property
    def is_gatt(self) -> bool:
        return bool(self.points)


@dataclass(frozen=True, slots=True, kw_only=True)
class BleBusSettings(BusSettings):
    """A Bluetooth adapter (``hci0``), through BlueZ."""

    adapter: str
    scanning: ScanningMode
    #: GATT connections at once on this adapter.
    max_connections: int
    #: Seconds a GATT connect (or read) may take before it is abandoned.
    connect_timeout: float
    #: Longest wait, in seconds, between attempts to start scanning on a failing adapter.
    retry_max: float
