"""Values arriving at the broker equal what the simulated meter holds, for every type and word
order, after scaling. The register images are built here with ``struct``, independently of the
gateway's decoder, so a bug shared by an encoder and the decoder cannot hide."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import RegisterBank, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker
from fieldgate_sim.template_meter import TemplateMeter

from tests.harness import GatewayProcess, gateway_yaml, start_gateway

# (type, struct format, value, scale, offset): extremes of each range and awkward floats.
CASES = [
    ("u16", ">H", 65535, 1.0, 0.0),
    ("i16", ">h", -32768, 1.0, 0.0),
    ("u32", ">I", 4_000_000_000, 1.0, 0.0),
    ("i32", ">i", -2_000_000_001, 1.0, 0.0),
    ("u64", ">Q", 2**64 - 2, 1.0, 0.0),
    ("i64", ">q", -(2**62) - 7, 1.0, 0.0),
    ("f32", ">f", 230.125, 1.0, 0.0),
    ("f64", ">d", -1234567.891011, 1.0, 0.0),
    ("u16", ">H", 2305, 0.1, 0.0),  # 230.5 V sent as tenths
    ("i32", ">i", -150, 0.01, 100.0),
    ("f32", ">f", 49.98, 1.0, -0.5),
]


def words(fmt: str, value: float, word_order: str) -> list[int]:
    raw = struct.pack(fmt, value)
    image = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return image[::-1] if word_order == "little" else image


def expected_value(fmt: str, value: float, scale: float, offset: float) -> float:
    # What the meter means, not binary noise: a float32 cannot hold 49.98 exactly, and is
    # published as the shortest decimal that is the same float32 (49.98, not 49.979999542...);
    # every value here is that decimal already.
    assert struct.unpack(fmt, struct.pack(fmt, value))[0] == value or fmt == ">f"
    return value if (scale, offset) == (1.0, 0.0) else value * scale + offset


def test_values_at_the_broker_match_the_meter(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    holding: list[int] = []
    inputs: list[int] = []
    points: list[str] = []
    expected: dict[str, float] = {}
    for index, (value_type, fmt, value, scale, offset) in enumerate(CASES):
        for word_order in ("big", "little"):
            for table, image in (("holding", holding), ("input", inputs)):
                name = f"{table}_{index}_{value_type}_{word_order}"
                points.append(
                    f"      - {{name: {name}, register: {table}, address: {len(image)}, "
                    f"type: {value_type}, word_order: {word_order}, scale: {scale}, "
                    f"offset: {offset}, unit: u{index}}}\n"
                )
                image.extend(words(fmt, value, word_order))
                expected[name] = expected_value(fmt, value, scale, offset)

    with start_in_thread([RegisterBank(7, holding=holding, input=inputs, size=256)]) as meter:
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=f"""\
            - name: lan
              type: modbus_tcp
              host: 127.0.0.1
              port: {meter.port}
            """,
            devices="- name: bank\n  bus: lan\n  unit_id: 7\n  interval: 1s\n  points:\n"
            + "".join(line[4:] for line in points),
        )
        before = datetime.now(UTC)
        gateway = start_gateway(gateways, tmp_path, config)
        assert fleet.wait_for(lambda f: len(f.readings()) >= 2, timeout=20), gateway.log()
        assert gateway.stop() == 0

    # Every message was checked against docs/ on arrival (CheckedFleet).
    first = fleet.readings()[0]
    assert first["gateway"] == "gw-test"
    assert first["device"] == "bank"
    assert first["quality"] == "good"
    values = fleet.values(first)
    units = fleet.units(first)
    assert set(values) == set(expected)
    for name, value in expected.items():
        assert values[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name
        assert (units[name] or "").startswith("u")
        if isinstance(value, int):
            assert values[name] == value, f"{name}: integers must arrive exact"
    read_at = datetime.fromisoformat(first["ts"])
    assert read_at.tzinfo is not None
    assert before <= read_at <= datetime.now(UTC)
    assert read_at.microsecond % 1000 == 0  # milliseconds, as documented
    topic = next(m.topic for m in fleet.messages() if m.topic.endswith("/reading"))
    assert topic == "fieldgate/gw-test/devices/bank/reading"


def test_text_and_enum_values_reach_the_broker_as_the_meter_means_them(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    # Template meters from hw-sim: a heat meter's enumerated states and unit codes, an
    # inverter's model and serial strings; through the buffer and the JSON dialect to the broker.
    heat = TemplateMeter(1, "aquametro-calec-st")
    inverter = TemplateMeter(2, "sunspec-inverter-float")
    with start_in_thread([heat, inverter]) as meter:
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=f"""\
            - name: lan
              type: modbus_tcp
              host: 127.0.0.1
              port: {meter.port}
            """,
            devices="""\
            - {name: heat, bus: lan, unit_id: 1, interval: 1s, template: aquametro-calec-st}
            - {name: pv, bus: lan, unit_id: 2, interval: 1s, template: sunspec-inverter-float}
            """,
        )
        gateway = start_gateway(gateways, tmp_path, config)
        got = lambda f: {r["device"] for r in f.readings()} >= {"heat", "pv"}  # noqa: E731
        assert fleet.wait_for(got, timeout=20), gateway.log()
        assert gateway.stop() == 0

    for device, simulated in (("heat", heat), ("pv", inverter)):
        payload = next(r for r in fleet.readings() if r["device"] == device)
        assert payload["quality"] == "good"
        values = fleet.values(payload)
        assert set(values) == set(simulated.values)
        for name, meant in simulated.values.items():
            if isinstance(meant, str):
                assert values[name] == meant, name
            else:
                assert values[name] == pytest.approx(meant, rel=1e-9), name
    heat_reading = next(r for r in fleet.readings() if r["device"] == "heat")
    assert fleet.values(heat_reading)["device_kind"] == "CALEC ST"
    assert fleet.values(heat_reading)["energy_unit"] == "kWh"
    assert fleet.units(heat_reading)["energy_unit"] is None
    description = fleet.description(heat_reading)
    assert (description["template"], description["manufacturer"]) == (
        "aquametro-calec-st",
        "Aquametro",
    )
