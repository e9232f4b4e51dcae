"""Config models owned by the Modbus driver: the bus, the device and its points."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from gateway.config.fields import BusBase, DeviceBase, Duration, Name, StrictModel


class RegisterType(StrEnum):
    """Which register table a point lives in (function code 3 or 4)."""

    HOLDING = "holding"
    INPUT = "input"


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


class WordOrder(StrEnum):
    """Order of the 16-bit registers within a multi-register value. Bytes within a register
    are always big-endian, as the Modbus specification says."""

    BIG = "big"
    LITTLE = "little"


REGISTER_COUNT: dict[ValueType, int] = {
    ValueType.U16: 1,
    ValueType.I16: 1,
    ValueType.U32: 2,
    ValueType.I32: 2,
    ValueType.F32: 2,
    ValueType.U64: 4,
    ValueType.I64: 4,
    ValueType.F64: 4,
}

#: The largest register count one read request may ask for (Modbus application protocol, 6.3).
MAX_REGISTERS_PER_READ = 125


class ModbusPoint(StrictModel):
    """One value of a device: where its registers are and how to turn them into a number."""

    name: Name = Field(description="Unique within the device; the key in the payload's values")
    address: int = Field(ge=0, le=65535, description="Zero-based register address (as on the wire)")
    # "register" is what technicians write, but it shadows an attribute of pydantic's base.
    register_type: RegisterType = Field(
        default=RegisterType.HOLDING,
        alias="register",
        description="holding (function 3) or input (function 4)",
    )
    type: ValueType = Field(description="Encoding of the value in the registers")
    word_order: WordOrder = Field(
        default=WordOrder.BIG,
        description="big: most significant register first; little: least significant first",
    )
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = Field(default=0.0, description="value = raw * scale + offset")
    unit: str | None = Field(
        default=None, max_length=32, description="Engineering unit, e.g. V, kWh"
    )

    @property
    def register_count(self) -> int:
        return REGISTER_COUNT[self.type]

    @model_validator(mode="after")
    def _fits_in_address_space(self) -> ModbusPoint:
        if self.address + self.register_count > 65536:
            raise ValueError(
                f"a {self.type} at address {self.address} runs past the last register (65535)"
            )
        return self


class ModbusDevice(DeviceBase):
    """A Modbus server (slave) on a bus, with the points to read from it."""

    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit id (slave address)")
    max_gap: int = Field(
        default=0,
        ge=0,
        le=MAX_REGISTERS_PER_READ,
        description=(
            "Unused registers a request may read across to merge two blocks into one request; "
            "raise it only for meters that answer reads of unmapped registers"
        ),
    )
    points: list[ModbusPoint] = Field(min_length=1, description="The values to read")

    @model_validator(mode="after")
    def _point_names_unique(self) -> ModbusDevice:
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"point name {point.name!r} is used twice; names must be unique")
            seen.add(point.name)
        return self


class ModbusTcpBus(BusBase):
    """A Modbus TCP endpoint: a meter with Ethernet, or a TCP-to-RS-485 gateway."""

    type: Literal["modbus_tcp"]
    host: str = Field(min_length=1, description="IP address or host name")
    port: int = Field(default=502, ge=1, le=65535)
    timeout: Duration = Field(default=1.0, description="How long to wait for an answer")
    reconnect_max: Duration = Field(
        default=60.0, description="Longest wait between reconnect attempts (backoff cap)"
    )

    device_model = ModbusDevice
