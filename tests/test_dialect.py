"""The JSON dialect, pure: topics, the exact bytes of a reading, timestamps, and the status
messages, checked against docs/payload.schema.json without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import wire_bytes
from gateway.buffer import BufferStats
from gateway.descriptions import Descriptions
from gateway.driver import LineCounts
from gateway.events import BufferedEvent, DeviceDrops, DropReason, EventKind, GatewayEvent
from gateway.health import BusHealth, HealthRegistry, LatencyHistogram
from gateway.readings import (
    BufferedReading,
    DeviceIdentity,
    DeviceInfo,
    PointInfo,
    PointValue,
    Quality,
    Reading,
)
from gateway.upstream.dialect import Dialect, OutgoingMessage
from gateway.upstream.json_dialect import GatewayInfo, JsonDialect, iso_utc_ms, layout_id
from tests.wire import validate, validator

VALIDATOR = validator("payload")
#: The largest epoch milliseconds with a four-digit year, as the schema's pattern wants.
LAST_MS_OF_9999 = 253402300799999

METER = DeviceInfo(
    "m1",
    "rs485",
    "modbus",
    template="eastron-sdm630",
    manufacturer="Eastron",
    model="SDM630-Modbus",
    medium="electricity",
    points=(
        PointInfo("voltage_l1", "V"),
        PointInfo("import_energy", "kWh"),
        PointInfo("setpoint", "W", writable=True, minimum=0, maximum=5000),
    ),
)
#: How the birth and the description name METER.
METER_IDENTITY = {
    "bus": "rs485",
    "kind": "modbus",
    "template": "eastron-sdm630",
    "manufacturer": "Eastron",
    "model": "SDM630-Modbus",
    "medium": "electricity",
}
INFO = GatewayInfo("1.2.3", "sha256:" + "ab" * 32, 1764072000123, (METER,))
dialect = JsonDialect("site/a", "gw-1", INFO)


def test_json_dialect_is_a_dialect():
    chosen: Dialect = dialect
    assert chosen.birth().topic == "site/a/gw-1/status"


PARTIAL = BufferedReading(
    42,
    Reading(
        "m1",
        1764072000123,
        (
            PointValue("voltage_l1", 231.5, "V"),
            PointValue("import_energy", None, "kWh"),
            PointValue("count", 7, None),
        ),
        Quality.PARTIAL,
    ),
)


def test_partial_reading_is_these_exact_bytes():
    message = dialect.reading(PARTIAL)
    assert message == OutgoingMessage(
        "site/a/gw-1/devices/m1/reading",
        b'{"schema":2,"gateway":"gw-1","device":"m1","seq":42,"ts":"2025-11-25T12:00:00.123Z",'
        b'"quality":"partial","layout":"' + layout_of(PARTIAL).encode() + b'",'
        b'"values":[231.5,null,7]}',
        retain=False,
        qos=1,
    )
    VALIDATOR.validate(json.loads(message.payload))


def layout_of(buffered: BufferedReading) -> str:
    return layout_id(tuple((p.name, p.unit) for p in buffered.reading.values))


def test_the_description_goes_once_per_session_and_layout_and_says_the_points():
    session = JsonDialect("site/a", "gw-1", INFO)
    session.birth()
    first = session.description(PARTIAL)
    assert first is not None
    assert (first.topic, first.retain, first.qos) == ("site/a/gw-1/devices/m1/description", True, 1)
    document = json.loads(first.payload)
    validator("description").validate(document)
    assert document == {
        "schema": 2,
        "gateway": "gw-1",
        "device": "m1",
        **METER_IDENTITY,
        "layout": layout_of(PARTIAL),
        "points": [
            {"name": "voltage_l1", "unit": "V"},
            {"name": "import_energy", "unit": "kWh"},
            {"name": "count", "unit": None},
        ],
    }
    assert session.description(PARTIAL) is None  # sent already in this session
    changed = BufferedReading(43, Reading("m1", 0, (PointValue("setpoint", 10, "W"),)))
    again = session.description(changed)
    assert again is not None
    assert json.loads(again.payload)["points"] == [
        {"name": "setpoint", "unit": "W", "writable": True, "min": 0, "max": 5000}
    ]
    session.birth()  # a new session: the fleet's broker may have lost the retained one
    assert session.description(changed) is not None


def test_what_a_device_says_of_itself_is_described_again_and_the_config_wins():
    sensor = DeviceInfo("s1", "radio", "ble", points=(PointInfo("temperature", "°C"),))
    descriptions = Descriptions((METER, sensor))
    session = JsonDialect("site/a", "gw-1", INFO, descriptions)
    session.birth()
    reading = BufferedReading(
        7, Reading("s1", 0, (PointValue("temperature", 4.5, "°C"), PointValue("rssi", -60, "dBm")))
    )
    first = session.description(reading)
    assert first is not None
    assert "model" not in json.loads(first.payload)
    assert session.description(reading) is None
    said = DeviceIdentity(
        manufacturer="Ruuvi Innovations Ltd.",
        model="RuuviTag",
        device_name="RuuviTag 0003",
        points=(
            PointInfo("temperature", "°C", device_class="temperature"),
            PointInfo("rssi", "dBm", device_class="signal_strength"),
        ),
    )
    assert descriptions.identify("s1", said)
    assert not descriptions.identify("s1", said)  # nothing new: nothing to send again
    assert not descriptions.identify("not-configured", said)
    again = session.description(reading)
    assert again is not None
    assert again.retain
    document = json.loads(again.payload)
    validator("description").validate(document)
    assert document["layout"] == json.loads(first.payload)["layout"]
    assert (document["manufacturer"], document["model"], document["device_name"]) == (
        "Ruuvi Innovations Ltd.",
        "RuuviTag",
        "RuuviTag 0003",
    )
    assert document["points"] == [
        {"name": "temperature", "unit": "°C", "device_class": "temperature"},
        {"name": "rssi", "unit": "dBm", "device_class": "signal_strength"},
    ]
    assert session.description(reading) is None
    # What the config says is never overridden by what the device says.
    assert not descriptions.identify("m1", DeviceIdentity(manufacturer="Other", model="X"))
    meter = descriptions.get("m1")
    assert meter is not None
    assert (meter.manufacturer, meter.model) == ("Eastron", "SDM630-Modbus")


def test_a_layout_id_is_the_same_for_the_same_points_and_differs_otherwise():
    assert layout_id((("v", "V"),)) == layout_id((("v", "V"),))
    assert layout_id((("v", "V"),)) != layout_id((("v", "mV"),))
    assert layout_id((("a", None), ("b", None))) != layout_id((("b", None), ("a", None)))


def test_birth_says_who_and_what_and_the_status_messages_are_retained_qos1():
    will, birth, goodbye = dialect.will(), dialect.birth(), dialect.goodbye()
    assert {will.topic, birth.topic, goodbye.topic} == {"site/a/gw-1/status"}
    assert all(m.retain and m.qos == 1 for m in (will, birth, goodbye))
    offline = {"schema": 2, "gateway": "gw-1", "state": "offline"}
    assert json.loads(will.payload) == json.loads(goodbye.payload) == offline
    document = json.loads(birth.payload)
    assert document == {
        "schema": 2,
        "gateway": "gw-1",
        "state": "online",
        "version": "1.2.3",
        "config": "sha256:" + "ab" * 32,
        "started": "2025-11-25T12:00:00.123Z",
        "devices": [{"name": "m1", **METER_IDENTITY}],
    }
    for message in (will, birth, goodbye):
        validator("status").validate(json.loads(message.payload))


def test_non_finite_values_never_become_invalid_json():
    # reading_from_values makes NaN null before a reading is stored; a NaN that got past it is
    # a bug, and must not become invalid JSON on the wire: it is sent as null.
    for bad in (float("nan"), float("inf"), float("-inf")):
        buffered = BufferedReading(1, Reading("m1", 0, (PointValue("v", bad, "V"),)))
        payload = dialect.reading(buffered).payload
        assert json.loads(payload, parse_constant=pytest.fail)["values"] == [None]


@pytest.mark.parametrize(
    ("epoch_ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (1000, "1970-01-01T00:00:01.000Z"),
        (1764072000123, "2025-11-25T12:00:00.123Z"),
        (LAST_MS_OF_9999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_iso_utc_ms_known_values(epoch_ms: int, text: str):
    assert iso_utc_ms(epoch_ms) == text


@given(st.integers(min_value=0, max_value=LAST_MS_OF_9999))
def test_iso_utc_ms_round_trips_to_the_millisecond(epoch_ms: int):
    text = iso_utc_ms(epoch_ms)
    assert len(text) == 24
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1) == epoch_ms


names = st.text(min_size=1, max_size=12)
values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
)
readings = st.builds(
    BufferedReading,
    st.integers(min_value=1, max_value=2**63 - 1),
    st.builds(
        Reading,
        names,
        st.integers(min_value=0, max_value=LAST_MS_OF_9999),
        st.lists(
            st.builds(PointValue, names, values, st.none() | names),
            unique_by=lambda p: p.name,
            max_size=6,
        ).map(tuple),
        st.sampled_from(Quality),
    ),
)


@given(readings)
def test_every_reading_matches_the_schema_and_decodes_back(buffered: BufferedReading):
    message = dialect.reading(buffered)
    document: dict[str, Any] = json.loads(message.payload)
    VALIDATOR.validate(document)
    reading = buffered.reading
    assert message.topic == f"site/a/gw-1/devices/{reading.device}/reading"
    assert (document["gateway"], document["device"], document["seq"]) == (
        "gw-1",
        reading.device,
        buffered.seq,
    )
    assert document["quality"] == reading.quality.value
    description = dialect.description(buffered)
    if description is not None:
        validator("description").validate(json.loads(description.payload))
        points = json.loads(description.payload)["points"]
        assert [(p["name"], p["unit"]) for p in points] == [
            (p.name, p.unit) for p in reading.values
        ]
    assert document["layout"] == layout_of(buffered)
    assert document["values"] == [p.value for p in reading.values]


def test_a_historical_reading_says_so_and_a_live_one_is_unchanged():
    buffered = BufferedReading(7, Reading("m1", 0, (PointValue("v", 1, "V"),)))
    live = json.loads(dialect.reading(buffered).payload)
    historical = json.loads(dialect.reading(buffered, historical=True).payload)
    assert "historical" not in live
    assert historical == {**live, "historical": True}
    VALIDATOR.validate(historical)


EVENT_VALIDATOR = validator("event")


def test_a_drop_event_is_these_exact_bytes():
    event = GatewayEvent(
        EventKind.DROPPED,
        1764072000123,
        DropReason.MAX_SIZE,
        seq_first=3,
        seq_last=9,
        devices=(
            DeviceDrops("m1", 4, 1764071000000, 1764071003000),
            DeviceDrops("m2", 2, 1764071000500, 1764071002500),
        ),
    )
    message = dialect.event(BufferedEvent(12, event))
    assert message == OutgoingMessage(
        "site/a/gw-1/events",
        b'{"schema":2,"gateway":"gw-1","event":"dropped","ts":"2025-11-25T12:00:00.123Z","id":12,'
        b'"reason":"max_size","count":6,"devices":{"m1":{"count":4,'
        b'"first_ts":"2025-11-25T11:43:20.000Z","last_ts":"2025-11-25T11:43:23.000Z"},'
        b'"m2":{"count":2,"first_ts":"2025-11-25T11:43:20.500Z",'
        b'"last_ts":"2025-11-25T11:43:22.500Z"}},"seq_first":3,"seq_last":9}',
        retain=False,
        qos=1,
    )
    EVENT_VALIDATOR.validate(json.loads(message.payload))


event_kinds = st.sampled_from(EventKind)
events = st.builds(
    BufferedEvent,
    st.none() | st.integers(min_value=1, max_value=2**62),
    st.builds(
        GatewayEvent,
        event_kinds,
        st.integers(min_value=0, max_value=LAST_MS_OF_9999),
        st.sampled_from(DropReason),
        st.none() | st.integers(min_value=1, max_value=2**62),
        st.none() | st.integers(min_value=1, max_value=2**62),
        st.lists(
            st.builds(
                DeviceDrops,
                names,
                st.integers(min_value=1, max_value=10**9),
                st.integers(min_value=0, max_value=LAST_MS_OF_9999),
                st.integers(min_value=0, max_value=LAST_MS_OF_9999),
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda d: d.device,
        ).map(tuple),
        st.none() | st.text(max_size=40),
    ),
)


@given(events)
def test_every_event_matches_the_schema_and_survives_the_store(buffered: BufferedEvent):
    document = json.loads(dialect.event(buffered).payload)
    EVENT_VALIDATOR.validate(document)
    assert document["event"] == buffered.event.kind.value
    # What the buffer stores is what it reads back.
    assert GatewayEvent.from_json(buffered.event.to_json()) == buffered.event


def test_a_value_costs_at_most_20_bytes_upstream_in_issue_11s_shape():
    # bench/wire_bytes.py in short: 30 float32 points of a simulated SDM630, a minute of polls.
    figures = wire_bytes.measure(wire_bytes.readings(60))
    assert figures.packets / figures.values <= wire_bytes.TARGET


def test_the_health_message_is_retained_and_matches_its_schema():
    registry = HealthRegistry()
    registry.device("m1").succeeded(1764072000123)
    registry.device("m2").failed("no answer within the timeout")
    registry.device("m3")  # not polled yet
    registry.uplink_counts.connects = 3
    registry.uplink_counts.publish_latency.observe(0.02)
    registry.buses["rs485"] = BusHealth(
        "rs485", lambda: LineCounts(requests=10, timeouts=2, crc_errors=1, exceptions=1)
    )
    stats = BufferStats(waiting=5, oldest_read_at_ms=1764072000000, newest_seq=9, dropped=2)
    for figures in (stats, None):  # None: the buffer cannot be read
        message = dialect.health(registry.report(1764072001000, figures))
        assert (message.topic, message.retain, message.qos) == ("site/a/gw-1/health", True, 1)
        document = json.loads(message.payload)
        validator("health").validate(document)
    assert document["devices"]["m2"] == {
        "up": False,
        "last_success": None,
        "polls_ok": 0,
        "polls_failed": 1,
        "driver_faults": 0,
        "cycles_skipped": 0,
        "error": "no answer within the timeout",
    }
    assert document["devices"]["m1"]["last_success"] == "2025-11-25T12:00:00.123Z"
    assert document["devices"]["m3"]["up"] is None
    assert document["buffer"]["waiting"] is None
    assert document["buses"] == {"rs485": {"requests": 10, "timeouts": 2, "errors": 2}}
    assert document["uplink"] == {
        "reconnects": 2,
        "failures": 0,
        "acknowledged": 1,
        "publish_latency_sum_s": 0.02,
    }


def test_latency_buckets_are_cumulative_and_end_with_inf():
    histogram = LatencyHistogram()
    for seconds in (0.001, 0.02, 0.02, 7.0, 1000.0):
        histogram.observe(seconds)
    buckets = dict(histogram.cumulative())
    assert (buckets["0.005"], buckets["0.025"], buckets["10"], buckets["+Inf"]) == (1, 3, 4, 5)
    assert histogram.count == 5


def test_the_tests_schema_check_refuses_what_docs_do_not_describe():
    # tests/wire.py checks every message the broker tests receive: it must be able to fail.
    validate("site/a/gw-1/status", dialect.birth().payload)
    with pytest.raises(jsonschema.ValidationError):
        validate("site/a/gw-1/status", b'{"schema": 2, "gateway": "g", "state": "asleep"}')
    with pytest.raises(jsonschema.ValidationError):
        validate("site/a/gw-1/devices/m/reading", b'{"schema": 1}')
    with pytest.raises(AssertionError):
        validate("site/a/gw-1/somewhere-new", b"{}")
