"""Registers -> numbers and text. Pure: no I/O, no pymodbus, so it can be tested exhaustively.

Values carry the precision the meter has, not binary noise: a float32 becomes the shortest
decimal that turns back into the same float32 (229.01, not 229.00999450683594), and a scaled
value is rounded to the decimals its scale and offset imply (399.2, not 399.20000000000005).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping, Sequence
from math import isfinite

from drivers.modbus.settings import (
    REGISTER_COUNT,
    ByteOrder,
    ModbusPointSettings,
    ValueType,
    WordOrder,
)

_F32 = struct.Struct(">f")
_pack_f32 = _F32.pack

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


#: Below this a float32 is subnormal: it has fewer significant bits, so its shortest decimal
#: may be shorter than six digits written out would show.
_FLOAT32_SMALLEST_NORMAL = 2.0**-126


def shortest_float32(value: float) -> float:
    """The float with the fewest significant digits that is the same float32 as ``value``."""
    if value == 0.0 or not isfinite(value):
        return value
    if abs(value) < _FLOAT32_SMALLEST_NORMAL:
        return _shortest_subnormal(value)
    # Every value of every poll comes through here: the round trips are written out rather
    # than calls (OverflowError: a value rounded past the largest float32 does not round-trip).
    target = _pack_f32(value)
    try:
        # A normal float32 lies within 2**-24 (relative) of its shortest decimal, and a
        # decimal of six or fewer digits is 5e-7 (relative) from the next rounding boundary of
        # six digits: when any decimal of up to six digits round-trips, it is the one that
        # `.6g` writes. So two or three tries instead of up to nine (meter values mostly need
        # seven or eight digits).
        seven = float(f"{value:.7g}")
        if _pack_f32(seven) == target:
            six = float(f"{value:.6g}")
            return six if _pack_f32(six) == target else seven
        eight = float(f"{value:.8g}")
        if _pack_f32(eight) == target:
            return eight
    except OverflowError:
        pass
    return float(f"{value:.9g}")  # nine digits always round-trip a float32


def _shortest_subnormal(value: float) -> float:
    target = _pack_f32(value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if _round_trips(candidate, target):
            return candidate
    return value


def _round_trips(candidate: float, target: bytes) -> bool:
    try:
        return _F32.pack(candidate) == target
    except OverflowError:  # rounded past the largest float32
        return False


def _decimals(number: float) -> int:
    """Decimal places of ``number`` as written (0.01 -> 2, 10 -> 0, 1e-05 -> 5, 120.0 -> 0)."""
    # repr is the shortest text that round-trips; read its places off it (Decimal's
    # normalize() does the same, at ten times the cost, for every scaled value of every poll).
    mantissa, _, exponent = repr(number).partition("e")
    fraction = mantissa.partition(".")[2].rstrip("0")
    return max(0, len(fraction) - (int(exponent) if exponent else 0))


def scale_value(raw: int | float, scale: float, offset: float) -> int | float:
    """``raw * scale + offset``; integers stay integers when nothing scales them, so a 64-bit
    counter keeps every digit. A scaled integer is rounded to the decimals the scale and offset
    imply; a scaled float keeps the decimals of the raw value too."""
    if scale == 1.0 and offset == 0.0:
        # An integer keeps every digit; a float is already its shortest decimal (rounding it
        # to the places it has gives it back).
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


def decode_point(
    point: ModbusPointSettings, words: Sequence[int] | Sequence[bool]
) -> int | float | str:
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


#: Decodes one point from a register answer's data, given the point's byte offset in it.
PointDecoder = Callable[[bytes, int], int | float | str]


def register_decoder(point: ModbusPointSettings) -> PointDecoder:
    """:func:`decode_point` for a point of a register table, as a function of the answer's
    bytes and the point's offset in them, built once per plan instead of per poll. The usual
    layout (most significant word and byte first, no bit) unpacks straight from the bytes;
    any other goes through :func:`decode_point`, which gives the same values."""
    fmt = _STRUCT_FORMAT.get(point.type)
    plain = (
        point.word_order is WordOrder.BIG
        and point.byte_order is ByteOrder.BIG
        and point.bit is None
    )
    if fmt is None or not plain:
        words = struct.Struct(f">{point.register_count}H").unpack_from
        return lambda data, at: decode_point(point, words(data, at))
    unpack = struct.Struct(fmt).unpack_from
    scale, offset = point.scale, point.offset
    if point.type is ValueType.F32:
        if scale == 1.0 and offset == 0.0:
            return lambda data, at: shortest_float32(unpack(data, at)[0])
        return lambda data, at: scale_value(shortest_float32(unpack(data, at)[0]), scale, offset)
    if scale == 1.0 and offset == 0.0:
        return lambda data, at: unpack(data, at)[0]
    return lambda data, at: scale_value(unpack(data, at)[0], scale, offset)


class BlockDecoder:
    """Decodes the answer to one planned read of a register table: every point's value, in the
    request's point order.

    The usual block (points one after another, each most significant word and byte first, no
    bit) is unpacked by one ``struct`` call for the whole answer, then each raw number is
    finished (float32 to its shortest decimal, scaling) by a function chosen once per point;
    any other block is decoded point by point, which gives the same values."""

    __slots__ = ("_finish", "_names", "_point_decoders", "_raw_is_value", "_same_finish", "_unpack")

    def __init__(self, address: int, points: Sequence[ModbusPointSettings]) -> None:
        self._names = tuple(point.name for point in points)
        offsets = [2 * (point.address - address) for point in points]
        self._unpack: Callable[[bytes], tuple[int | float, ...]] | None = None
        self._finish: tuple[Callable[[int | float], int | float] | None, ...] = ()
        self._same_finish: Callable[[int | float], int | float] | None = None
        self._raw_is_value = False
        self._point_decoders: tuple[tuple[int, PointDecoder], ...] = ()
        layout = _block_layout(points, offsets)
        if layout is None:
            self._point_decoders = tuple(
                (at, register_decoder(point)) for point, at in zip(points, offsets, strict=True)
            )
            return
        self._unpack = struct.Struct(layout).unpack_from
        self._finish = tuple(_finisher(point) for point in points)
        if len(set(self._finish)) == 1:
            self._same_finish = self._finish[0]
            self._raw_is_value = self._same_finish is None

    def values(self, data: bytes) -> list[int | float | str]:
        """Each point's value, in the request's point order."""
        if self._unpack is None:
            return [decode(data, at) for at, decode in self._point_decoders]
        raw = self._unpack(data)
        finish = self._same_finish
        if finish is not None:
            return list(map(finish, raw))
        if self._raw_is_value:
            return list(raw)
        return [
            value if step is None else step(value)
            for step, value in zip(self._finish, raw, strict=True)
        ]

    def __call__(self, data: bytes) -> list[tuple[str, int | float | str]]:
        return list(zip(self._names, self.values(data), strict=True))


def _block_layout(points: Sequence[ModbusPointSettings], offsets: Sequence[int]) -> str | None:
    """One ``struct`` format for the whole block (pad bytes over the gaps), or ``None`` when a
    point is not in the usual layout or overlaps the one before it."""
    layout = [">"]
    at = 0
    for point, offset in zip(points, offsets, strict=True):
        fmt = _STRUCT_FORMAT.get(point.type)
        usual = (
            point.word_order is WordOrder.BIG
            and point.byte_order is ByteOrder.BIG
            and point.bit is None
        )
        if fmt is None or not usual or offset < at:
            return None
        if offset > at:
            layout.append(f"{offset - at}x")
        layout.append(fmt[1])
        at = offset + struct.calcsize(fmt)
    return "".join(layout)


def _finisher(point: ModbusPointSettings) -> Callable[[int | float], int | float] | None:
    """What turns the raw number of a point in the usual layout into its value (``None``: it
    is its value). Shared by points alike, so a block of float32s is finished by one ``map``."""
    scale, offset = point.scale, point.offset
    unscaled = scale == 1.0 and offset == 0.0
    if point.type is ValueType.F32:
        if unscaled:
            return shortest_float32
        return lambda raw: scale_value(shortest_float32(raw), scale, offset)
    if unscaled:
        return None
    return lambda raw: scale_value(raw, scale, offset)


class NotEncodable(ValueError):
    """A value the point's registers cannot hold (out of the type's range, not a whole raw
    number where the type is an integer)."""


def encode_point(point: ModbusPointSettings, value: float) -> list[int] | list[bool]:
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
