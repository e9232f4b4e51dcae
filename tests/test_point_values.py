"""Point values of every kind (integers, floats, text, null) survive the buffer's row encoding
and reach the JSON message unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer import ReadingStore, _encode_values, decode_point_values
from gateway.readings import BufferedReading, PointValue, Reading, reading_from_values
from tests.wire import dialect as wire_dialect

_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(),  # beyond 64 bits too, which orjson refuses
    st.floats(),  # NaN and infinity too: a Reading built by hand may carry them
    st.text(max_size=40),  # lone surrogates too, which orjson refuses
)
_POINTS = st.lists(
    st.builds(
        PointValue, st.text(min_size=1, max_size=10), _VALUES, st.none() | st.text(max_size=5)
    ),
    max_size=8,
)


def exactly(points: tuple[PointValue, ...] | list[PointValue]) -> list[tuple[object, ...]]:
    """Points compared by type and exact value (NaN equal to NaN, -0.0 unlike 0.0)."""
    return [(p.name, p.unit, type(p.value), repr(p.value)) for p in points]


@given(points=_POINTS)
def test_values_round_trip_exactly_through_the_row_encoding(points: list[PointValue]):
    layout = tuple((p.name, p.unit) for p in points)
    assert exactly(decode_point_values(_encode_values(points), layout)) == exactly(points)


@given(points=_POINTS)
def test_rows_written_before_layouts_still_decode(points: list[PointValue]):
    # The encoding of every file written before layouts: [name, value, unit] triples.
    old = json.dumps([[p.name, p.value, p.unit] for p in points], separators=(",", ":"))
    assert exactly(decode_point_values(old, None)) == exactly(points)


def test_every_kind_of_value_comes_back_from_the_file_as_it_went_in(tmp_path: Path):
    values = (
        PointValue("i64_max", 2**63 - 1, None),
        PointValue("i64_min", -(2**63), None),
        PointValue("u64_max", 2**64 - 1, "Wh"),
        PointValue("u128", 2**100 + 1, "Wh"),
        PointValue("float32", 231.6693878173828, "V"),
        PointValue("tiny", 5e-324, None),
        PointValue("negative_zero", -0.0, None),
        PointValue("nan", math.nan, None),
        PointValue("inf", -math.inf, None),
        PointValue("text", 'Zählerstand "A", ünïcode ✓', None),
        PointValue("empty", "", ""),
        PointValue("missing", None, "A"),
    )
    store = ReadingStore(tmp_path / "b.db", 10**9, 1e9)
    try:
        store.append(Reading("m1", 1, values))
        store.append(Reading("m1", 2, values[:3]))  # another layout for the same device
        first, second = store.oldest(0, 10)
    finally:
        store.close()
    assert exactly(first.reading.values) == exactly(values)
    assert second.reading.values == values[:3]


@given(points=_POINTS)
def test_a_reading_is_good_exactly_when_every_value_is_finite_or_text(points: list[PointValue]):
    reading = reading_from_values("m", 1, tuple(points))
    usable = [
        isinstance(p.value, str | int) or (isinstance(p.value, float) and math.isfinite(p.value))
        for p in points
    ]
    assert (reading.quality == "good") is all(usable)
    assert [p.value is None for p in reading.values] == [
        not ok or p.value is None for p, ok in zip(points, usable, strict=True)
    ]


def test_finite_values_whose_sum_overflows_keep_the_reading_good():
    values = (PointValue("a", 1e308, None), PointValue("b", 1e308, None), PointValue("c", 2**1100))
    assert reading_from_values("m", 1, values).values == values


@given(text=st.text(max_size=40))
def test_text_is_sent_as_a_json_string_and_keeps_the_reading_good(text: str):
    reading = reading_from_values("m", 1_700_000_000_000, (PointValue("model", text, None),))
    message = wire_dialect("fieldgate", "gw").reading(BufferedReading(1, reading))
    body = json.loads(message.payload)
    assert body["values"] == [text]
    assert body["quality"] == "good"
    assert isinstance(reading, Reading)
