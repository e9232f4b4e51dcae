"""Registers -> numbers. Pure: no I/O, no pymodbus, so it can be tested exhaustively."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from drivers.modbus.config import REGISTER_COUNT, ValueType, WordOrder

_STRUCT_FORMAT: dict[ValueType, str] = {
    ValueType.U16: ">H",
    ValueType.I16: ">h",
    ValueType.U32: ">I",
    ValueType.I32: ">i",
    ValueType.U64: ">Q",
    ValueType.I64: ">q",
    ValueType.F32: ">f",
    ValueType.F64: ">d",
}


def decode_registers(
    registers: Sequence[int], value_type: ValueType, word_order: WordOrder
) -> int | float:
    """The raw value encoded by ``registers`` (exactly as many as the type needs).

    Each register holds two bytes, most significant first (the Modbus byte order). ``word_order``
    says whether the most significant register comes first (big) or last (little).
    """
    count = REGISTER_COUNT[value_type]
    if len(registers) != count:
        raise ValueError(f"{value_type} needs {count} registers, got {len(registers)}")
    ordered = registers if word_order is WordOrder.BIG else list(reversed(registers))
    raw = b"".join(register.to_bytes(2, "big") for register in ordered)
    value: int | float = struct.unpack(_STRUCT_FORMAT[value_type], raw)[0]
    return value


def scale_value(raw: int | float, scale: float, offset: float) -> int | float:
    """``raw * scale + offset``; integers stay integers when nothing scales them, so a 64-bit
    counter keeps every digit."""
    if isinstance(raw, int) and scale == 1.0 and offset == 0.0:
        return raw
    return raw * scale + offset
