"""Point values of every kind (integers, floats, text, null) survive the buffer's row encoding
and reach the JSON message unchanged."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.buffer import _decode_points, _encode_points
from gateway.readings import BufferedReading, PointValue, Reading, reading_from_values
from tests.wire import dialect as wire_dialect

_VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
_POINTS = st.lists(
    st.builds(
        PointValue, st.text(min_size=1, max_size=10), _VALUES, st.none() | st.text(max_size=5)
    ),
    max_size=8,
)


@given(points=_POINTS)
def test_points_round_trip_through_the_buffer_row(points: list[PointValue]):
    assert _decode_points(_encode_points(points)) == tuple(points)


@given(text=st.text(max_size=40))
def test_text_is_sent_as_a_json_string_and_keeps_the_reading_good(text: str):
    reading = reading_from_values("m", 1_700_000_000_000, (PointValue("model", text, None),))
    message = wire_dialect("fieldgate", "gw").reading(BufferedReading(1, reading))
    body = json.loads(message.payload)
    assert body["values"] == [text]
    assert body["quality"] == "good"
    assert isinstance(reading, Reading)
