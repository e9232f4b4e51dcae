"""Decoding and request planning, checked against bytes built independently with ``struct``."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.config import ModbusPoint
from drivers.modbus.decode import (
    BlockDecoder,
    NotEncodable,
    decode_point,
    decode_registers,
    encode_point,
    scale_value,
    shortest_float32,
)
from drivers.modbus.plan import ReadRequest, plan_requests
from drivers.modbus.settings import (
    BIT_TABLES,
    ByteOrder,
    ModbusPointSettings,
    RegisterType,
    ValueType,
    WordOrder,
)
from gateway.config.handover import settings_of

FORMATS = {
    ValueType.U16: (">H", st.integers(0, 2**16 - 1)),
    ValueType.I16: (">h", st.integers(-(2**15), 2**15 - 1)),
    ValueType.U32: (">I", st.integers(0, 2**32 - 1)),
    ValueType.I32: (">i", st.integers(-(2**31), 2**31 - 1)),
    ValueType.U64: (">Q", st.integers(0, 2**64 - 1)),
    ValueType.I64: (">q", st.integers(-(2**63), 2**63 - 1)),
    ValueType.F32: (">f", st.floats(width=32, allow_nan=False)),
    ValueType.F64: (">d", st.floats(allow_nan=False)),
}


def registers_for(
    fmt: str, value: float, word_order: WordOrder, byte_order: ByteOrder = ByteOrder.BIG
) -> list[int]:
    """What a meter puts on the wire: big-endian bytes in 16-bit words (swapped for little
    byte order), words reversed for little word order. Written without the decoder's code."""
    raw = struct.pack(fmt, value)
    if byte_order is ByteOrder.LITTLE:
        words = [raw[i + 1] << 8 | raw[i] for i in range(0, len(raw), 2)]
    else:
        words = [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
    return words[::-1] if word_order is WordOrder.LITTLE else words


@pytest.mark.parametrize("value_type", list(FORMATS))
@pytest.mark.parametrize("word_order", list(WordOrder))
@pytest.mark.parametrize("byte_order", list(ByteOrder))
@given(data=st.data())
def test_decode_matches_struct(
    value_type: ValueType, word_order: WordOrder, byte_order: ByteOrder, data: st.DataObject
):
    fmt, values = FORMATS[value_type]
    value = data.draw(values)
    registers = registers_for(fmt, value, word_order, byte_order)
    decoded = decode_registers(registers, value_type, word_order, byte_order)
    assert type(decoded) is type(value)
    if value_type is ValueType.F32:
        # The same float32, written as the shortest decimal that is it.
        assert struct.pack(fmt, decoded) == struct.pack(fmt, value)
    else:
        assert decoded == value


def test_the_four_orders_of_a_32_bit_value():
    # 0x41200000 is 10.0: ABCD, CDAB, BADC, DCBA.
    assert decode_registers([0x4120, 0x0000], ValueType.F32, WordOrder.BIG) == 10.0
    assert decode_registers([0x0000, 0x4120], ValueType.F32, WordOrder.LITTLE) == 10.0
    assert (
        decode_registers([0x2041, 0x0000], ValueType.F32, WordOrder.BIG, ByteOrder.LITTLE) == 10.0
    )
    assert (
        decode_registers([0x0000, 0x2041], ValueType.F32, WordOrder.LITTLE, ByteOrder.LITTLE)
        == 10.0
    )


def same_float32(a: float, b: float) -> bool:
    try:
        return struct.pack(">f", a) == struct.pack(">f", b)
    except OverflowError:
        return False


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_is_the_shortest_decimal_that_round_trips(value: float):
    shortest = shortest_float32(value)
    assert same_float32(shortest, value)
    digits = len(Decimal(repr(shortest)).normalize().as_tuple().digits)
    for fewer in range(1, digits):
        assert not same_float32(float(f"{value:.{fewer}g}"), value)


def test_what_a_meter_meant():
    assert (
        decode_registers(registers_for(">f", 229.01, WordOrder.BIG), ValueType.F32, WordOrder.BIG)
        == 229.01
    )
    assert repr(scale_value(3992, 0.1, 0.0)) == "399.2"
    assert repr(scale_value(12345, 0.01, 0.0)) == "123.45"
    assert repr(scale_value(7, 0.001, -0.5)) == "-0.493"


@given(raw=st.integers(-(2**31), 2**31 - 1), places=st.integers(0, 4))
def test_scaled_integers_carry_the_decimals_of_their_scale(raw: int, places: int):
    scale = 10.0**-places
    value = scale_value(raw, scale, 0.0)
    assert value == float(f"{raw * scale:.{places}f}")


def test_known_register_images():
    # 230.5 V as an IEEE-754 float is 0x43668000, as an SDM630 sends it (high word first).
    assert decode_registers([0x4366, 0x8000], ValueType.F32, WordOrder.BIG) == 230.5
    assert decode_registers([0x8000, 0x4366], ValueType.F32, WordOrder.LITTLE) == 230.5
    assert decode_registers([0xFFFF], ValueType.I16, WordOrder.BIG) == -1
    assert decode_registers([0x0001, 0x0000], ValueType.U32, WordOrder.LITTLE) == 1
    assert decode_registers([0, 0, 0, 1], ValueType.U64, WordOrder.BIG) == 1


def test_nan_passes_through_decoding():
    assert math.isnan(decode_registers([0x7FC0, 0x0000], ValueType.F32, WordOrder.BIG))


def test_wrong_register_count_is_an_error():
    with pytest.raises(ValueError, match="f32 needs 2 registers, got 1"):
        decode_registers([1], ValueType.F32, WordOrder.BIG)


def test_scaling_keeps_integers_exact_unless_scaled():
    assert scale_value(2**63 - 1, 1.0, 0.0) == 2**63 - 1
    assert scale_value(1234, 0.1, 0.0) == 123.4
    assert scale_value(10, 2.0, -5.0) == 15.0


def point_settings(spec: dict[str, object]) -> ModbusPointSettings:
    """The settings the driver gets of the point ``spec`` configures (validated first)."""
    settings: ModbusPointSettings = settings_of(ModbusPoint.model_validate(spec))
    return settings


def point(
    name: str, address: int, value_type: str, register: str = "holding"
) -> ModbusPointSettings:
    return point_settings(
        {"name": name, "address": address, "type": value_type, "register": register}
    )


def test_contiguous_points_share_one_request():
    points = [point("a", 0, "f32"), point("b", 2, "f32"), point("c", 4, "u16")]
    (request,) = plan_requests(points)
    assert (request.address, request.count) == (0, 5)
    assert [p.name for p in request.points] == ["a", "b", "c"]


def test_gap_splits_unless_allowed():
    points = [point("a", 0, "f32"), point("b", 10, "f32")]
    assert len(plan_requests(points, max_gap=0)) == 2
    (merged,) = plan_requests(points, max_gap=8)
    assert (merged.address, merged.count) == (0, 12)


def test_a_request_never_reads_across_a_refused_register():
    points = [point("a", 0, "u16"), point("b", 2, "u16"), point("c", 6, "u16")]
    refused = {(RegisterType.HOLDING, 4)}
    requests = plan_requests(points, max_gap=10, avoid=refused)
    assert [(r.address, r.count) for r in requests] == [(0, 3), (6, 1)]


def test_tables_are_never_mixed():
    points = [point("a", 0, "u16", "holding"), point("b", 1, "u16", "input")]
    requests = plan_requests(points)
    assert {(r.register_type, r.address, r.count) for r in requests} == {
        (RegisterType.HOLDING, 0, 1),
        (RegisterType.INPUT, 1, 1),
    }


point_specs = st.lists(
    st.tuples(
        st.integers(0, 400), st.sampled_from(list(FORMATS)), st.sampled_from(list(RegisterType))
    ),
    min_size=1,
    max_size=40,
)


@given(specs=point_specs, max_gap=st.integers(0, 20))
def test_plan_covers_every_point_within_limits(specs, max_gap):
    points = [
        point(
            f"p{i}", address, "bool" if register in BIT_TABLES else str(value_type), str(register)
        )
        for i, (address, value_type, register) in enumerate(specs)
    ]
    requests = plan_requests(points, max_gap=max_gap)
    covered = [p.name for r in requests for p in r.points]
    assert sorted(covered) == sorted(p.name for p in points)
    for request in requests:
        assert 1 <= request.count <= (2000 if request.register_type in BIT_TABLES else 125)
        for p in request.points:
            assert p.register_type is request.register_type
            assert request.address <= p.address
            assert p.address + p.register_count <= request.address + request.count
    # Fewest requests: no two requests of a table could have been one.
    for register_type in RegisterType:
        ordered = sorted(
            (r for r in requests if r.register_type is register_type), key=lambda r: r.address
        )
        for first, second in itertools.pairwise(ordered):
            gap = second.address - (first.address + first.count)
            span = second.address + second.count - first.address
            limit = 2000 if register_type in BIT_TABLES else 125
            assert gap > max_gap or span > limit


def test_bits_of_registers_and_bit_tables():
    flags = point_settings({"name": "f", "address": 0, "type": "u16", "bit": 3})
    assert decode_point(flags, [0b1000]) == 1
    assert decode_point(flags, [0b0111]) == 0
    coil = point("c", 5, "bool", "coil")
    assert decode_point(coil, [True]) == 1


def test_bool_belongs_to_bit_tables_only():
    with pytest.raises(ValueError, match="coil and discrete_input points have type bool"):
        point("c", 0, "u16", "coil")
    with pytest.raises(ValueError, match="type bool is for coil"):
        point("c", 0, "bool", "holding")


@given(specs=point_specs)
def test_plan_is_never_slower_on_the_wire_than_one_request_per_point(specs):
    # On a serial line the bus allows gaps only up to what a second transaction would cost
    # (~20 characters of framing and silences, 2 characters a register): 10 registers.
    points = [
        point(f"p{i}", address, str(value_type), str(register))
        for i, (address, value_type, register) in enumerate(specs)
        if register not in BIT_TABLES
    ]

    def chars(requests: list[ReadRequest]) -> int:
        return sum(20 + 2 * r.count for r in requests)

    one_each = sum(20 + 2 * p.register_count for p in points)
    assert chars(plan_requests(points, max_gap=10)) <= one_each


# -- text: strings and enums ----------------------------------------------------------------------


def text_registers(raw: bytes, byte_order: ByteOrder) -> list[int]:
    """ASCII bytes as a meter sends them, two to a register, written apart from the decoder."""
    padded = raw + b"\0" * (len(raw) % 2)
    if byte_order is ByteOrder.LITTLE:
        return [padded[i + 1] << 8 | padded[i] for i in range(0, len(padded), 2)]
    return [padded[i] << 8 | padded[i + 1] for i in range(0, len(padded), 2)]


def string_point(length: int, byte_order: ByteOrder = ByteOrder.BIG) -> ModbusPointSettings:
    return point_settings(
        {"name": "s", "address": 0, "type": "string", "length": length, "byte_order": byte_order}
    )


# Printable ASCII without trailing spaces: what a meter's model or serial string holds.
_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    lambda s: s.rstrip(" ")
)


@pytest.mark.parametrize("byte_order", list(ByteOrder))
@given(text=_TEXT, padding=st.sampled_from([b"", b"\0", b" ", b"   \0\0", b"\0garbage"]))
def test_string_round_trips_with_its_padding_stripped(
    byte_order: ByteOrder, text: str, padding: bytes
):
    registers = text_registers(text.encode("ascii") + padding, byte_order)
    point = string_point(len(registers) or 1, byte_order)
    assert decode_point(point, registers or [0]) == text


@given(raw=st.binary(min_size=2, max_size=40).filter(lambda b: len(b) % 2 == 0))
def test_string_never_fails_and_replaces_bytes_that_are_not_ascii(raw: bytes):
    registers = text_registers(raw, ByteOrder.BIG)
    decoded = decode_point(string_point(len(registers)), registers)
    assert isinstance(decoded, str)
    assert "\0" not in decoded
    assert not decoded.endswith(" ")
    kept = raw.split(b"\0", 1)[0]
    assert decoded.count("\ufffd") == sum(1 for b in kept.rstrip(b" ") if b > 0x7F)


def test_string_reads_only_its_own_registers():
    # The block a string sits in has more registers after it: they are not part of the text.
    registers = text_registers(b"SDM630", ByteOrder.BIG) + text_registers(b"XX", ByteOrder.BIG)
    assert decode_point(string_point(3), registers) == "SDM630"


ENUM_LABELS = {0: "off", 1: "heating", 2: "cooling", 70000: "fault"}


@pytest.mark.parametrize("length", [1, 2])
@pytest.mark.parametrize("word_order", list(WordOrder))
@given(raw=st.integers(0, 2**32 - 1))
def test_enum_maps_raw_values_and_writes_unknown_ones_as_their_number(
    length: int, word_order: WordOrder, raw: int
):
    raw %= 2 ** (16 * length)
    point = point_settings(
        {
            "name": "mode",
            "address": 0,
            "type": "enum",
            "length": length,
            "word_order": word_order,
            "values": ENUM_LABELS,
        }
    )
    fmt = ">H" if length == 1 else ">I"
    registers = registers_for(fmt, raw, word_order)
    assert decode_point(point, registers) == ENUM_LABELS.get(raw, str(raw))


@pytest.mark.parametrize(
    ("point", "why"),
    [
        ({"type": "string"}, "needs length"),
        ({"type": "string", "length": 4, "scale": 0.1}, "no scale"),
        ({"type": "enum"}, "needs values"),
        ({"type": "enum", "length": 3, "values": {1: "a"}}, "u16 (length: 1"),
        ({"type": "u16", "values": {1: "a"}}, "only with type enum"),
        ({"type": "u16", "length": 2}, "only with type string or enum"),
        ({"type": "string", "length": 4, "address": 65533}, "runs past"),
    ],
)
def test_text_points_refuse_what_they_cannot_mean(point: dict[str, object], why: str):
    with pytest.raises(ValueError, match=re.escape(why)):
        ModbusPoint.model_validate({"name": "p", "address": 0, **point})


_REGISTER_TYPES = [t for t in ValueType if t is not ValueType.BOOL]


@st.composite
def register_points(draw: st.DrawFn) -> ModbusPointSettings:
    value_type = draw(st.sampled_from(_REGISTER_TYPES))
    spec: dict[str, object] = {
        "name": "p",
        "register": "holding",
        "address": draw(st.integers(0, 3)),
        "type": value_type.value,
        "word_order": draw(st.sampled_from([o.value for o in WordOrder])),
        "byte_order": draw(st.sampled_from([o.value for o in ByteOrder])),
    }
    if value_type is ValueType.STRING:
        spec["length"] = draw(st.integers(1, 4))
    elif value_type is ValueType.ENUM:
        spec["values"] = {0: "off", 1: "on"}
    elif value_type is ValueType.U16 and draw(st.booleans()):
        spec["bit"] = draw(st.integers(0, 15))
    else:
        spec["scale"] = draw(st.sampled_from([1.0, 0.1, 0.01, 10.0, 2.5]))
        spec["offset"] = draw(st.sampled_from([0.0, -40.0, 0.5]))
    return point_settings(spec)


@given(point=register_points(), registers=st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8))
def test_block_decoder_gives_what_decode_point_gives(
    point: ModbusPointSettings, registers: list[int]
):
    # The decoder planned once per request reads the answer's bytes directly; every layout
    # must give exactly what the register-by-register decoding gives.
    data = struct.pack(">8H", *registers)
    ((name, value),) = BlockDecoder(0, [point])(data)
    expected = decode_point(point, registers[point.address :])
    assert name == point.name
    assert type(value) is type(expected)
    both_nan = isinstance(value, float) and math.isnan(value) and math.isnan(float(expected))
    assert value == expected or both_nan


_WRITABLE_TYPES = [t for t in ValueType if t not in (ValueType.STRING, ValueType.ENUM)]


@given(
    value_type=st.sampled_from([t for t in _WRITABLE_TYPES if t is not ValueType.BOOL]),
    word_order=st.sampled_from(WordOrder),
    byte_order=st.sampled_from(ByteOrder),
    raw=st.integers(min_value=0, max_value=32767),
)
def test_a_written_value_reads_back_as_itself(value_type, word_order, byte_order, raw):
    point = point_settings(
        {
            "name": "p",
            "address": 0,
            "type": value_type,
            "word_order": word_order,
            "byte_order": byte_order,
            "scale": 0.1,
        }
    )
    value = decode_point(point, encode_point(point, raw / 10))
    assert value == pytest.approx(raw / 10, rel=1e-6)


def test_values_the_registers_cannot_hold_are_refused():
    u16 = point_settings({"name": "p", "address": 0, "type": "u16", "scale": 0.1})
    with pytest.raises(NotEncodable, match="multiple of its scale"):
        encode_point(u16, 1.05)
    with pytest.raises(NotEncodable, match="does not fit"):
        encode_point(u16, -1)
    coil = point_settings({"name": "c", "address": 0, "type": "bool", "register": "coil"})
    assert encode_point(coil, 1) == [True]
    with pytest.raises(NotEncodable, match="write 0 or 1"):
        encode_point(coil, 2)


@given(
    points=st.lists(register_points(), min_size=1, max_size=6),
    gaps=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    data=st.data(),
)
def test_a_block_decodes_as_its_points_one_by_one(
    points: list[ModbusPointSettings], gaps: list[int], data: st.DataObject
):
    # The planner puts several points (with gaps between them, or the same registers read as
    # two points) in one request; the block's one unpack must give what each point alone gives.
    placed: list[ModbusPointSettings] = []
    end = 0
    for index, (point, gap) in enumerate(zip(points, gaps, strict=False)):
        overlap = data.draw(st.booleans()) if placed else False
        address = placed[-1].address if overlap else end + gap
        placed.append(dataclasses.replace(point, name=f"p{index}", address=address))
        end = max(end, address + point.register_count)
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=end, max_size=end))
    answer = struct.pack(f">{end}H", *registers)
    got = BlockDecoder(0, placed).values(answer)
    for point, value in zip(placed, got, strict=True):
        expected = decode_point(point, registers[point.address :])
        assert type(value) is type(expected)
        both_nan = isinstance(value, float) and math.isnan(value) and math.isnan(float(expected))
        assert value == expected or both_nan
