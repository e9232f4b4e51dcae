"""What a running Modbus bus holds of its config: plain frozen dataclasses with the validated
values of the models in :mod:`drivers.modbus.config` (same field names; see
:mod:`gateway.settings`), and the enums and constants both sides share.

The runtime (:mod:`.bus`, :mod:`.plan`, :mod:`.decode`, :mod:`.tcp`, :mod:`.rtu`) reads only
these, so a running gateway never imports pydantic; the config models import the enums from
here and call :func:`register_count` for their own checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Literal

from gateway.readings import DeviceInfo, PointInfo
from gateway.settings import BusSettings, DeviceSettings


class RegisterType(StrEnum):
    """Which table a point lives in (read with function code 1, 2, 3 or 4)."""

    COIL = "coil"
    DISCRETE_INPUT = "discrete_input"
    HOLDING = "holding"
    INPUT = "input"


#: The tables of single bits (coils, discrete inputs), as opposed to 16-bit registers.
BIT_TABLES = frozenset({RegisterType.COIL, RegisterType.DISCRETE_INPUT})


class ValueType(StrEnum):
    """How a point's registers encode its value."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    #: One coil or discrete input (1 or 0).
    BOOL = "bool"
    #: ASCII text in ``length`` registers, two characters each.
    STRING = "string"
    #: A u16 (``length: 1``, the default) or u32 (``length: 2``) mapped to a label by ``values``.
    ENUM = "enum"


class WordOrder(StrEnum):
    """Order of the 16-bit registers within a multi-register value."""

    BIG = "big"
    LITTLE = "little"


class ByteOrder(StrEnum):
    """Order of the two bytes within each register: big as the Modbus specification says; a
    few meters swap them. With word order, the four orders of a 32-bit value: ABCD (big, big),
    CDAB (little words), BADC (little bytes), DCBA (both little)."""

    BIG = "big"
    LITTLE = "little"


class Parity(StrEnum):
    NONE = "N"
    EVEN = "E"
    ODD = "O"


REGISTER_COUNT: dict[ValueType, int] = {
    ValueType.U16: 1,
    ValueType.I16: 1,
    ValueType.U32: 2,
    ValueType.I32: 2,
    ValueType.F32: 2,
    ValueType.U64: 4,
    ValueType.I64: 4,
    ValueType.F64: 4,
    ValueType.BOOL: 1,
}

#: The largest register count one read request may ask for (Modbus application protocol, 6.3).
MAX_REGISTERS_PER_READ = 125

#: Types whose register count is the point's ``length``, not fixed by the type.
SIZED_TYPES = frozenset({ValueType.STRING, ValueType.ENUM})


def register_count(value_type: ValueType, length: int | None) -> int:
    """Registers (or, in a bit table, bits) a point of ``value_type`` and ``length`` spans."""
    if value_type in SIZED_TYPES:
        return length or 1
    return REGISTER_COUNT[value_type]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusPointSettings:
    """One value of a device (:class:`drivers.modbus.config.ModbusPoint`): where its registers
    are and how to turn them into a number."""

    name: str
    address: int
    register_type: RegisterType
    type: ValueType
    word_order: WordOrder
    byte_order: ByteOrder
    bit: int | None
    scale: float
    offset: float
    unit: str | None
    length: int | None
    values: Mapping[int, str] | None
    writable: bool
    min: float | None
    max: float | None

    @property
    def register_count(self) -> int:
        """Registers (or, in a bit table, bits) the point spans."""
        return register_count(self.type, self.length)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusDeviceSettings(DeviceSettings):
    """A Modbus server (slave) on a bus, with its points (:class:`drivers.modbus.config.
    ModbusDevice`, its template's points merged in), and what its template says of the meter."""

    unit_id: int
    max_gap: int
    max_block: int
    template: str | None
    drop: tuple[str, ...]
    points: tuple[ModbusPointSettings, ...]
    #: Neither the device nor its template gave ``max_gap``: gaps are read across and what the
    #: meter refuses is learned (see :class:`drivers.modbus.bus.ModbusPolledDevice`).
    learn_max_gap: bool
    #: The template's meter (None without a template), for the fleet's description.
    manufacturer: str | None
    model: str | None
    medium: str | None

    kind: ClassVar[str] = "modbus"

    def info(self) -> DeviceInfo:
        return DeviceInfo(
            self.name,
            self.bus,
            self.kind,
            template=self.template,
            manufacturer=self.manufacturer,
            model=self.model,
            medium=self.medium,
            points=tuple(
                PointInfo(
                    point.name,
                    point.unit,
                    point.writable,
                    point.min,
                    point.max,
                    text=point.type in SIZED_TYPES,
                )
                for point in self.points
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class _ModbusBusSettings(BusSettings):
    """What every Modbus bus has: how long to wait, and how to back off (seconds)."""

    timeout: float
    reconnect_max: float
    slave_backoff_max: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusTcpBusSettings(_ModbusBusSettings):
    """A Modbus TCP endpoint (:class:`drivers.modbus.config.ModbusTcpBus`)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusRtuBusSettings(_ModbusBusSettings):
    """Modbus RTU on a serial port (:class:`drivers.modbus.config.ModbusRtuBus`)."""

    port: str
    baudrate: int
    parity: Parity
    data_bits: Literal[7, 8]
    stop_bits: Literal[1, 2]
    #: Seconds of quiet after an answer before the next request (None: only the silence).
    turnaround: float | None

    @property
    def char_time(self) -> float:
        """Seconds one character takes on the wire: start bit, data, parity, stop bits."""
        bits = 1 + self.data_bits + (0 if self.parity is Parity.NONE else 1) + self.stop_bits
        return bits / self.baudrate

    @property
    def silence(self) -> float:
        """The inter-frame silence: 3.5 characters, and at least 1.75 ms (the specification's
        fixed value above 19200 baud)."""
        return max(3.5 * self.char_time, 0.00175)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusRtuOverTcpBusSettings(_ModbusBusSettings):
    """RTU frames tunnelled over TCP (:class:`drivers.modbus.config.ModbusRtuOverTcpBus`)."""

    host: str
    port: int
    #: Seconds of quiet after an answer before the next request.
    turnaround: float
