"""Decoding and request planning, checked against bytes built independently with ``struct``."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.config import ModbusPoint, RegisterType, ValueType, WordOrder
from drivers.modbus.decode import decode_registers, scale_value
from drivers.modbus.plan import plan_requests

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


def registers_for(fmt: str, value: float, word_order: WordOrder) -> list[int]:
    """What a meter puts on the wire: big-endian bytes in 16-bit words, words reversed for
    little word order. Written without the decoder's code."""
    raw = struct.pack(fmt, value)
    words = [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
    return words[::-1] if word_order is WordOrder.LITTLE else words


@pytest.mark.parametrize("value_type", list(ValueType))
@pytest.mark.parametrize("word_order", list(WordOrder))
@given(data=st.data())
def test_decode_matches_struct(value_type: ValueType, word_order: WordOrder, data: st.DataObject):
    fmt, values = FORMATS[value_type]
    value = data.draw(values)
    decoded = decode_registers(registers_for(fmt, value, word_order), value_type, word_order)
    assert decoded == value
    assert type(decoded) is type(value)


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
    assert scale_value(1234, 0.1, 0.0) == pytest.approx(123.4)
    assert scale_value(10, 2.0, -5.0) == 15.0


def point(name: str, address: int, value_type: str, register: str = "holding") -> ModbusPoint:
    return ModbusPoint.model_validate(
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


def test_tables_are_never_mixed():
    points = [point("a", 0, "u16", "holding"), point("b", 1, "u16", "input")]
    requests = plan_requests(points)
    assert {(r.register_type, r.address, r.count) for r in requests} == {
        (RegisterType.HOLDING, 0, 1),
        (RegisterType.INPUT, 1, 1),
    }


point_specs = st.lists(
    st.tuples(
        st.integers(0, 400), st.sampled_from(list(ValueType)), st.sampled_from(list(RegisterType))
    ),
    min_size=1,
    max_size=40,
)


@given(specs=point_specs, max_gap=st.integers(0, 20))
def test_plan_covers_every_point_within_limits(specs, max_gap):
    points = [
        point(f"p{i}", address, str(value_type), str(register))
        for i, (address, value_type, register) in enumerate(specs)
    ]
    requests = plan_requests(points, max_gap=max_gap)
    covered = [p.name for r in requests for p in r.points]
    assert sorted(covered) == sorted(p.name for p in points)
    for request in requests:
        assert 1 <= request.count <= 125
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
            assert gap > max_gap or span > 125
