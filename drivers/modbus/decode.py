"""Registers -> numbers and text. Pure: no I/O, no pymodbus, so it can be tested exhaustively.

Values carry the precision the meter has, not binary noise: a float32 becomes the shortest
decimal that turns back into the same float32 (229.01, not 229.00999450683594), and a scaled
value is rounded to the decimals its scale and offset imply (399.2, not 399.20000000000005).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from decimal import Decimal

from drivers.modbus.config import REGISTER_COUNT, ByteOrder, ModbusPoint, ValueType, WordOrder

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
    registers: Sequence[int],
    value_type: ValueType,
    word_order: WordOrder,
    byte_order: ByteOrder = ByteOrder.BIG,
) -> int | float:
    """The raw value encoded by ``registers`` (exactly as many as the type needs).

    ``byte_order`` says whether each register holds its most significant byte first (big, as
    the Modbus specification says) or last. ``word_order`` says whether the most significant
    register comes first (big) or last (little). A float32 is returned as the shortest decimal
    that round-trips it.
    """
    if value_type not in _STRUCT_FORMAT:
        raise ValueError(f"{value_type} values are not numbers of a fixed register count")
    count = REGISTER_COUNT[value_type]
    if len(registers) != count:
        raise ValueError(f"{value_type} needs {count} registers, got {len(registers)}")
    ordered = registers if word_order is WordOrder.BIG else list(reversed(registers))
    raw = b"".join(
        register.to_bytes(2, "big" if byte_order is ByteOrder.BIG else "little")
        for register in ordered
    )
    value: int | float = struct.unpack(_STRUCT_FORMAT[value_type], raw)[0]
    if value_type is ValueType.F32 and isinstance(value, float):
        return shortest_float32(value)
    return value


def shortest_float32(value: float) -> float:
    """The float with the fewest significant digits that is the same float32 as ``value``."""
    if not math.isfinite(value) or value == 0.0:
        return value
    target = struct.pack(">f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if struct.pack(">f", candidate) == target:
                return candidate
        except OverflowError:  # rounded past the largest float32
            continue
    return value


def _decimals(number: float) -> int:
    """Decimal places of ``number`` as written (0.01 -> 2, 10 -> 0, 1e-05 -> 5)."""
    exponent = Decimal(repr(number)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def scale_value(raw: int | float, scale: float, offset: float) -> int | float:
    """``raw * scale + offset``; integers stay integers when nothing scales them, so a 64-bit
    counter keeps every digit. A scaled integer is rounded to the decimals the scale and offset
    imply; a scaled float keeps the decimals of the raw value too."""
    if isinstance(raw, int) and scale == 1.0 and offset == 0.0:
        return raw
    value = raw * scale + offset
    if not math.isfinite(value):
        return value
    places = max(_decimals(scale), _decimals(offset))
    if isinstance(raw, float):
        if not math.isfinite(raw):
            return value
        places += _decimals(raw)
    if places > 15:
        return value
    return round(value, places)


def decode_string(
    registers: Sequence[int],
    word_order: WordOrder = WordOrder.BIG,
    byte_order: ByteOrder = ByteOrder.BIG,
) -> str:
    """ASCII text, two characters a register (the first in the high byte unless ``byte_order``
    is little). The text ends at the first NUL; trailing spaces (the usual padding) are
    stripped; a byte that is not ASCII becomes U+FFFD, never an error."""
    ordered = registers if word_order is WordOrder.BIG else list(reversed(registers))
    raw = b"".join(
        register.to_bytes(2, "big" if byte_order is ByteOrder.BIG else "little")
        for register in ordered
    )
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").rstrip(" ")


def enum_label(raw: int, labels: Mapping[int, str]) -> str:
    """The label of ``raw``; a value the table does not list is published as its number in
    text, so a new state of the meter is still seen (and the value stays a string)."""
    return labels.get(raw, str(raw))


def decode_point(point: ModbusPoint, words: Sequence[int] | Sequence[bool]) -> int | float | str:
    """The published value of ``point`` from the registers (or bits) starting at its address."""
    if point.type is ValueType.BOOL:
        return int(bool(words[0]))
    if point.type is ValueType.STRING:
        registers = [int(w) for w in words[: point.register_count]]
        return decode_string(registers, point.word_order, point.byte_order)
    if point.type is ValueType.ENUM:
        as_type = ValueType.U16 if point.register_count == 1 else ValueType.U32
        number = decode_registers(
            [int(w) for w in words[: point.register_count]],
            as_type,
            point.word_order,
            point.byte_order,
        )
        return enum_label(int(number), point.values or {})
    raw = decode_registers(
        [int(w) for w in words[: point.register_count]],
        point.type,
        point.word_order,
        point.byte_order,
    )
    if point.bit is not None:
        return (int(raw) >> point.bit) & 1
    return scale_value(raw, point.scale, point.offset)


class NotEncodable(ValueError):
    """A value the point's registers cannot hold (out of the type's range, not a whole raw
    number where the type is an integer)."""


def encode_point(point: ModbusPoint, value: float) -> list[int] | list[bool]:
    """The registers (or the one bit) that make ``point`` read ``value``: the inverse of
    :func:`decode_point` for the types a remote command may write (numbers and bools)."""
    if point.type is ValueType.BOOL:
        if value not in (0, 1):
            raise NotEncodable(f"{point.name} is a bool: write 0 or 1, not {value!r}")
        return [bool(value)]
    if point.type not in _STRUCT_FORMAT or point.bit is not None:
        raise NotEncodable(f"{point.name}: a {point.type} point cannot be written")
    raw: int | float = (value - point.offset) / point.scale
    if point.type not in (ValueType.F32, ValueType.F64):
        nearest = round(raw)
        # Scaling in binary floating point leaves noise (23.4 / 0.1 = 233.99999999999997).
        if not math.isclose(raw, nearest, rel_tol=1e-9, abs_tol=1e-9):
            raise NotEncodable(
                f"{point.name}: {value!r} is not a multiple of its scale {point.scale:g}"
            )
        raw = nearest
    try:
        packed = struct.pack(_STRUCT_FORMAT[point.type], raw)
    except (struct.error, OverflowError) as exc:
        raise NotEncodable(f"{point.name}: {value!r} does not fit a {point.type}") from exc
    registers = [
        int.from_bytes(packed[i : i + 2], "big" if point.byte_order is ByteOrder.BIG else "little")
        for i in range(0, len(packed), 2)
    ]
    return registers if point.word_order is WordOrder.BIG else list(reversed(registers))
