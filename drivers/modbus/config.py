"""Config models owned by the Modbus driver: the bus, the device and its points. Each names its
settings (:mod:`drivers.modbus.settings`, which also holds the enums they share), what a running
gateway keeps of it."""

from __future__ import annotations

import builtins
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from drivers.modbus.settings import (
    BIT_TABLES,
    MAX_REGISTERS_PER_READ,
    SIZED_TYPES,
    ByteOrder,
    ModbusDeviceSettings,
    ModbusPointSettings,
    ModbusRtuBusSettings,
    ModbusRtuOverTcpBusSettings,
    ModbusTcpBusSettings,
    Parity,
    RegisterType,
    ValueType,
    WordOrder,
    register_count,
)
from gateway.config.fields import (
    AnswerTimeout,
    BackoffCap,
    BusBase,
    DeviceBase,
    HostName,
    Name,
    StrictModel,
    shared,
)


class ModbusPoint(StrictModel):
    """One value of a device: where its registers are and how to turn them into a number."""

    # builtins.type: a class whose field is named ``type`` shadows the builtin here.
    settings: ClassVar[builtins.type[Any]] = ModbusPointSettings

    name: Name = Field(description="Unique within the device; the key in the payload's values")
    address: int = Field(ge=0, le=65535, description="Zero-based register address (as on the wire)")
    # "register" is what technicians write, but it shadows an attribute of pydantic's base.
    register_type: RegisterType = Field(
        default=RegisterType.HOLDING,
        alias="register",
        description=(
            "holding (function 3), input (function 4), coil (function 1) or discrete_input "
            "(function 2)"
        ),
    )
    type: ValueType = Field(description="Encoding of the value in the registers")
    word_order: WordOrder = Field(
        default=WordOrder.BIG,
        description="big: most significant register first; little: least significant first",
    )
    byte_order: ByteOrder = Field(
        default=ByteOrder.BIG,
        description="big: high byte first in each register (the standard); little: swapped",
    )
    bit: int | None = Field(
        default=None,
        ge=0,
        le=15,
        description="For a u16: publish only this bit (0 = least significant) as 1 or 0",
    )
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = Field(default=0.0, description="value = raw * scale + offset")
    unit: str | None = Field(
        default=None, max_length=32, description="Engineering unit, e.g. V, kWh"
    )
    length: int | None = Field(
        default=None,
        ge=1,
        le=MAX_REGISTERS_PER_READ,
        description=(
            "Registers the value spans: for a string (two ASCII characters each; required), "
            "for an enum 1 (a u16, the default) or 2 (a u32)"
        ),
    )
    values: dict[int, str] | None = Field(
        default=None,
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}},
        description=(
            "For an enum (required): raw value -> label; a raw value not listed is published "
            'as its number written as text ("7")'
        ),
    )
    writable: bool = Field(
        default=False,
        description=(
            "Remote commands may write this point (a holding register or a coil), only within "
            "min..max; off unless given"
        ),
    )
    min: float | None = Field(
        default=None, allow_inf_nan=False, description="Writable point: smallest value allowed"
    )
    max: float | None = Field(
        default=None, allow_inf_nan=False, description="Writable point: largest value allowed"
    )

    @property
    def register_count(self) -> int:
        """Registers (or, in a bit table, bits) the point spans."""
        return register_count(self.type, self.length)

    @model_validator(mode="after")
    def _fits_in_address_space(self) -> ModbusPoint:
        in_bit_table = self.register_type in BIT_TABLES
        if in_bit_table != (self.type is ValueType.BOOL):
            raise ValueError(
                "coil and discrete_input points have type bool, and only they do"
                if in_bit_table
                else "type bool is for coil and discrete_input points; for a bit of a "
                "register use type u16 with bit: N"
            )
        if self.bit is not None and self.type is not ValueType.U16:
            raise ValueError("bit: N is allowed only with type u16")
        self._text_types_sound()
        self._writable_sound()
        if self.address + self.register_count > 65536:
            raise ValueError(
                f"a {self.type} at address {self.address} runs past the last register (65535)"
            )
        return self

    def _writable_sound(self) -> None:
        if not self.writable:
            if self.min is not None or self.max is not None:
                raise ValueError("min and max are limits of a writable point: add writable: true")
            return
        if self.register_type not in {RegisterType.HOLDING, RegisterType.COIL}:
            raise ValueError(
                "only holding registers and coils can be written: make it register: holding "
                "(or coil), or drop writable"
            )
        if self.type in SIZED_TYPES or self.bit is not None:
            raise ValueError("a string, enum or single-bit point cannot be writable")
        if self.min is None or self.max is None:
            raise ValueError("a writable point needs both limits: min and max")
        if self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")

    def _text_types_sound(self) -> None:
        if self.type not in SIZED_TYPES:
            if self.length is not None:
                raise ValueError("length: N is allowed only with type string or enum")
            if self.values is not None:
                raise ValueError("values: is allowed only with type enum")
            return
        if self.scale != 1.0 or self.offset != 0.0:
            raise ValueError(f"a {self.type} point takes no scale or offset")
        if self.type is ValueType.STRING:
            if self.length is None:
                raise ValueError("a string point needs length: N (registers, two characters each)")
            if self.values is not None:
                raise ValueError("values: is allowed only with type enum")
            return
        if self.length not in {None, 1, 2}:
            raise ValueError("an enum is a u16 (length: 1, the default) or a u32 (length: 2)")
        if not self.values:
            raise ValueError("an enum point needs values: {raw value: label, ...}")


class ModbusDevice(DeviceBase):
    """A Modbus server (slave) on a bus, with the points to read from it."""

    settings: ClassVar[builtins.type[Any]] = ModbusDeviceSettings

    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit id (slave address)")
    max_gap: int = Field(
        default=0,
        ge=0,
        le=MAX_REGISTERS_PER_READ,
        description=(
            "Unused registers a request may read across to merge two blocks into one request. "
            "Left out here and in the template: gaps are read across and what the meter "
            "refuses is learned; 0: never read across a gap"
        ),
    )
    max_block: int = Field(
        default=MAX_REGISTERS_PER_READ,
        ge=1,
        le=MAX_REGISTERS_PER_READ,
        description="Most registers one request may read, for meters with a smaller limit",
    )
    template: str | None = Field(
        default=None,
        description=(
            "A meter template (`fieldgate templates list`): its points, block limits and "
            "identification; `points` then add to or replace the template's points by name"
        ),
    )
    drop: list[str] = Field(
        default_factory=list, description="Names of template points not to read"
    )
    points: list[ModbusPoint] = Field(
        default_factory=list,
        description="The values to read (with a template: points to add or replace)",
    )

    def settings_extras(self) -> dict[str, object]:
        """Whether ``max_gap`` was given (here or by the template: else the driver learns the
        gaps), and the template's meter for the fleet's description: the running gateway
        reads no template file."""
        # Imported here: the templates module reads this module's models.
        from drivers.modbus.templates import load_templates  # noqa: PLC0415

        template = load_templates().get(self.template) if self.template else None
        return {
            "learn_max_gap": "max_gap" not in self.model_fields_set,
            "manufacturer": template.manufacturer if template else None,
            "model": template.model if template else None,
            "medium": template.medium if template else None,
        }

    @field_validator("points", mode="after")
    @classmethod
    def _equal_points_as_one(
        cls, points: list[ModbusPoint], info: ValidationInfo
    ) -> list[ModbusPoint]:
        # Meters of one kind with their points listed by hand list the same points.
        return [shared(point, info) for point in points]

    @model_validator(mode="before")
    @classmethod
    def _expand_template(cls, data: object) -> object:
        # Imported here: the templates module reads this module's models.
        from drivers.modbus.templates import expand_template  # noqa: PLC0415

        return expand_template(data)

    @model_validator(mode="after")
    def _point_names_unique(self) -> ModbusDevice:
        if not self.points:
            raise ValueError("a Modbus device needs points, or a template that has them")
        seen: set[str] = set()
        for point in self.points:
            if point.name in seen:
                raise ValueError(f"point name {point.name!r} is used twice; names must be unique")
            seen.add(point.name)
        return self


class _ModbusBusBase(BusBase):
    """What every Modbus bus has: how long to wait, and how to back off."""

    timeout: AnswerTimeout = Field(default=1.0, description="How long to wait for an answer")
    reconnect_max: BackoffCap = Field(
        default=60.0, description="Longest wait between reconnect attempts (backoff cap)"
    )
    slave_backoff_max: BackoffCap = Field(
        default=60.0,
        description=(
            "A unit that does not answer (twice in a row) is asked again only after a backoff "
            "that doubles up to this, so a dead meter costs the line at most one timeout per "
            "backoff window and the others keep their schedule"
        ),
    )

    device_model = ModbusDevice


class ModbusTcpBus(_ModbusBusBase):
    """A Modbus TCP endpoint: a meter with Ethernet, or a TCP gateway with several unit ids
    behind it (all on one connection)."""

    settings: ClassVar[builtins.type[Any]] = ModbusTcpBusSettings

    type: Literal["modbus_tcp"]
    host: HostName = Field(description="IP address or host name")
    port: int = Field(default=502, ge=1, le=65535)


class ModbusRtuBus(_ModbusBusBase):
    """Modbus RTU on a serial port (RS-485): many slaves on one line, one transaction at a
    time, with the 3.5-character inter-frame silence. fieldgate owns the port exclusively."""

    settings: ClassVar[builtins.type[Any]] = ModbusRtuBusSettings

    type: Literal["modbus_rtu"]
    port: str = Field(
        min_length=1,
        max_length=4096,
        description="Serial device, e.g. /dev/ttyUSB0 (or a pyserial URL such as rfc2217://)",
    )
    baudrate: int = Field(default=9600, ge=300, le=921600, description="Bits per second")
    parity: Parity = Field(default=Parity.NONE, description="N (none), E (even) or O (odd)")
    data_bits: Literal[7, 8] = Field(default=8, description="7 or 8")
    stop_bits: Literal[1, 2] = Field(default=1, description="1 or 2")
    turnaround: AnswerTimeout | None = Field(
        default=None,
        description=(
            "Quiet time after an answer before the next request, for slaves that need time "
            "to release the line (default: only the 3.5-character silence)"
        ),
    )


class ModbusRtuOverTcpBus(_ModbusBusBase):
    """RTU frames (with CRC, no MBAP header) tunnelled over TCP: a serial device server (Moxa
    NPort, USR-TCP232) in transparent mode in front of an RS-485 line."""

    settings: ClassVar[builtins.type[Any]] = ModbusRtuOverTcpBusSettings

    type: Literal["modbus_rtu_over_tcp"]
    host: HostName = Field(description="IP address or host name")
    port: int = Field(default=4001, ge=1, le=65535)
    turnaround: AnswerTimeout = Field(
        default=0.005,
        description=(
            "Quiet time after an answer before the next request (the device server's line "
            "still needs its inter-frame silence)"
        ),
    )


#: The models, and the enums their fields take (defined in :mod:`drivers.modbus.settings`,
#: named here too for config-side code that reads a point's fields).
__all__ = [
    "ByteOrder",
    "ModbusDevice",
    "ModbusPoint",
    "ModbusRtuBus",
    "ModbusRtuOverTcpBus",
    "ModbusTcpBus",
    "Parity",
    "RegisterType",
    "ValueType",
    "WordOrder",
]
