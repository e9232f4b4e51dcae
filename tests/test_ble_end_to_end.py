"""BLE sensors through bleak's real BlueZ backend, against the simulated BlueZ of hw-sim on a
private system bus: advertisements -> gateway -> SQLite -> Mosquitto, with the values the
simulated sensors sent (encoded by hw-sim's own encoders, not by the parsers the gateway uses).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fieldgate_sim.bluez.simulator import (
    DEMO_BIND_KEY,
    Kind,
    SimSensor,
    SimulatedBluetooth,
    default_sensors,
)
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import RegisterBank, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

from tests.harness import GatewayProcess, gateway_yaml, start_gateway, wait_until
from tests.wire import CheckedFleet

PLAIN = "A4:C1:38:00:00:01"
ENCRYPTED = "A4:C1:38:00:00:02"
RUUVI = "C4:7C:8D:00:00:03"
PVVX = "A4:C1:38:00:00:04"
GOVEE = "A4:C1:38:00:00:06"
THERMOPRO = "B8:59:CE:00:00:07"
JUNK = "DE:AD:BE:EF:00:08"
GATT = "F0:F0:00:00:00:09"
WRONG_KEY = "A4:C1:38:00:00:0A"
MIBEACON = "4C:65:A8:00:00:0B"

#: The resolution each payload carries a measurement in: the gateway's value must be one the
#: sensor sent, to within it.
RESOLUTION = {"temperature": 0.01, "humidity": 0.01, "battery": 0.5, "pressure": 0.01}

GATT_DEVICE = f"""\
- name: gatt
  bus: radio
  address: "{GATT}"
  interval: 1s
  points:
    - {{name: temperature, characteristic: 2a6e, type: i16, scale: 0.01, unit: "°C", mode: notify}}
    - {{name: humidity, characteristic: '0x2A6F', type: u16, scale: 0.01, unit: "%"}}
    - {{name: battery, characteristic: 2a19, type: u8, unit: "%"}}
"""


def ble_bus(**extra: str) -> str:
    keys = {"adapter": "hci0", **extra}
    lines = "".join(f"  {key}: {value}\n" for key, value in keys.items())
    return f"- name: radio\n  type: ble\n{lines}"


def readings_of(fleet: FleetSubscriber, device: str) -> list[dict[str, Any]]:
    return [r for r in fleet.readings() if r["device"] == device]


def has_readings(devices: dict[str, int]) -> Callable[[FleetSubscriber], bool]:
    return lambda f: all(len(readings_of(f, d)) >= n for d, n in devices.items())


def assert_sent(
    bt: SimulatedBluetooth, address: str, fleet: FleetSubscriber, reading: dict[str, Any]
) -> None:
    """Every measurement of ``reading`` that the simulated sensor sends is one it sent."""
    sent: list[dict[str, float]] = bt.call(lambda: list(bt.sensor(address).sent))
    values = fleet.values(reading)
    checked = 0
    for name, tolerance in RESOLUTION.items():
        if name not in values:
            continue
        value = values[name]
        history = [s[name] for s in sent if name in s]
        if not history:
            continue
        checked += 1
        assert any(abs(value - v) <= tolerance / 2 for v in history), (address, name, value)
    assert checked >= 2, (address, reading)


def assert_wrong_key_reported_once(log: str, fleet: FleetSubscriber, wrong_key: str) -> None:
    """The sensor ``wrong-key`` was reported once, sent nothing, and no key reached the log."""
    assert log.count("device wrong-key failed") == 1, log
    assert "do not decrypt with the configured bind key" in log
    assert wrong_key not in log, "a key leaked into the log"
    assert DEMO_BIND_KEY.hex() not in log, "a key leaked into the log"
    assert not readings_of(fleet, "wrong-key")
    assert "Traceback" not in log, log


def test_ble_sensors_reach_the_broker_with_the_values_they_sent(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    key_file = tmp_path / "bind.key"
    key_file.write_text(DEMO_BIND_KEY.hex() + "\n")
    wrong = tmp_path / "wrong.key"
    wrong_key = "00112233445566778899aabbccddeeff"
    wrong.write_text(wrong_key)
    sensors = [
        *default_sensors(),
        SimSensor(Kind.BTHOME_ENCRYPTED, WRONG_KEY, "BTHome 000A", seed=10),
    ]
    with SimulatedBluetooth(sensors) as bt:
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(),
            devices=textwrap.dedent(f"""\
            - {{name: plain, bus: radio, address: "{PLAIN}", interval: 1s}}
            - {{name: secret, bus: radio, address: "{ENCRYPTED}", interval: 1s, format: bthome,
                bind_key_file: {key_file}}}
            - {{name: ruuvi, bus: radio, address: "{RUUVI}", interval: 1s, format: ruuvi}}
            - {{name: pvvx, bus: radio, address: "{PVVX}", interval: 1s}}
            - {{name: atc, bus: radio, name_pattern: "ATC_00000?", interval: 1s, format: atc}}
            - {{name: govee, bus: radio, address: "{GOVEE}", interval: 1s}}
            - {{name: thermopro, bus: radio, address: "{THERMOPRO}", interval: 1s}}
            - {{name: mijia, bus: radio, address: "{MIBEACON}", interval: 1s, format: xiaomi}}
            - {{name: junk, bus: radio, address: "{JUNK}", interval: 1s, format: bthome}}
            - {{name: wrong-key, bus: radio, address: "{WRONG_KEY}", interval: 1s,
                bind_key_file: {wrong}}}
            """)
            + GATT_DEVICE,
        )
        env = {"DBUS_SYSTEM_BUS_ADDRESS": bt.address}
        gateway = start_gateway(gateways, tmp_path, config, env)
        wanted = {"plain": 2, "secret": 2, "ruuvi": 2, "pvvx": 2, "atc": 2, "govee": 2}
        wanted |= {"thermopro": 2, "gatt": 2, "mijia": 2}
        assert fleet.wait_for(has_readings(wanted), timeout=40), gateway.log()
        assert gateway.wait_for_log("device wrong-key failed", timeout=10), gateway.log()
        for device, address in (
            ("plain", PLAIN),
            ("secret", ENCRYPTED),
            ("ruuvi", RUUVI),
            ("pvvx", PVVX),
            ("govee", GOVEE),
            ("thermopro", THERMOPRO),
            ("mijia", MIBEACON),
            ("gatt", GATT),
        ):
            for reading in readings_of(fleet, device):
                assert_sent(bt, address, fleet, reading)
        atc = readings_of(fleet, "atc")
        # The name pattern matches both ATC sensors; the first heard is taken, and kept.
        assert len({fleet.values(r)["voltage"] for r in atc}) == 1
        assert gateway.process is not None
        assert gateway.process.poll() is None, "the gateway must survive garbage adverts"
        assert gateway.stop() == 0

    assert_wrong_key_reported_once(gateway.log(), fleet, wrong_key)
    plain = readings_of(fleet, "plain")[-1]
    assert fleet.units(plain)["temperature"] == "°C"
    assert fleet.units(plain)["rssi"] == "dBm"
    gatt = readings_of(fleet, "gatt")[-1]
    assert set(fleet.values(gatt)) == {"temperature", "humidity", "battery"}
    # What each standard characteristic measures is in the description.
    assert {p["name"]: p.get("device_class") for p in fleet.description(gatt)["points"]} == {
        "temperature": "temperature",
        "humidity": "humidity",
        "battery": "battery",
    }
    assert gatt["quality"] == "good"


def test_a_vanished_sensor_is_reported_missing_once_and_its_return_is_seen(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    sensors = [SimSensor(Kind.BTHOME, PLAIN, "BTHome 0001", seed=1)]
    with SimulatedBluetooth(sensors) as bt:
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(),
            devices=f"- {{name: plain, bus: radio, address: '{PLAIN}', interval: 1s, "
            "stale_after: 2s}\n",
        )
        gateway = start_gateway(gateways, tmp_path, config, {"DBUS_SYSTEM_BUS_ADDRESS": bt.address})
        assert fleet.wait_for(has_readings({"plain": 1}), timeout=30), gateway.log()
        assert bt.simulator is not None
        bt.call(bt.simulator.vanish, PLAIN)
        assert gateway.wait_for_log("device plain failed", timeout=20), gateway.log()
        before = len(readings_of(fleet, "plain"))
        bt.call(bt.simulator.reappear, PLAIN)
        assert gateway.wait_for_log("device plain answers again", timeout=20), gateway.log()
        assert fleet.wait_for(has_readings({"plain": before + 1}), timeout=20)
        assert gateway.stop() == 0
    log = gateway.log()
    assert log.count("device plain failed") == 1, log
    assert "not heard for 2s (stale_after)" in log


def test_a_hanging_gatt_connect_blocks_neither_the_other_sensors_nor_modbus(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    sensors = [
        SimSensor(Kind.BTHOME, PLAIN, "BTHome 0001", seed=1),
        SimSensor(Kind.GATT, GATT, "GATT thermo 0009", seed=9),
    ]
    with (
        SimulatedBluetooth(sensors) as bt,
        start_in_thread([RegisterBank(1, holding=[2305], size=16)]) as meter,
    ):
        assert bt.simulator is not None
        bt.call(bt.simulator.set_connect, GATT, "hang")
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(connect_timeout="1s", max_connections="1")
            + f"- {{name: lan, type: modbus_tcp, host: 127.0.0.1, port: {meter.port}}}\n",
            devices=f"- {{name: plain, bus: radio, address: '{PLAIN}', interval: 1s}}\n"
            + GATT_DEVICE
            + "- {name: meter, bus: lan, interval: 1s, points: "
            "[{name: voltage, address: 0, type: u16, scale: 0.1, unit: V}]}\n",
        )
        gateway = start_gateway(gateways, tmp_path, config, {"DBUS_SYSTEM_BUS_ADDRESS": bt.address})
        simulator = bt.simulator

        def connects() -> int:
            return bt.call(lambda: simulator.devices[GATT].connects)

        assert wait_until(lambda: connects() >= 1, timeout=30), gateway.log()
        # While every connect hangs, the advertiser and the meter keep their one-second pace,
        # and the hanging connect is abandoned and tried again.
        plain = len(readings_of(fleet, "plain"))
        meter_readings = len(readings_of(fleet, "meter"))
        assert fleet.wait_for(
            has_readings({"plain": plain + 3, "meter": meter_readings + 3}), timeout=20
        ), gateway.log()
        assert wait_until(lambda: connects() >= 3, timeout=20), gateway.log()
        assert not readings_of(fleet, "gatt")
        bt.call(bt.simulator.set_connect, GATT, "ok")
        assert fleet.wait_for(has_readings({"gatt": 1}), timeout=30), gateway.log()
        assert gateway.stop() == 0
    assert fleet.values(readings_of(fleet, "meter")[-1])["voltage"] == pytest.approx(230.5)
    assert "gatt failed" in gateway.log()


def test_adapter_trouble_is_reported_once_and_scanning_resumes_while_modbus_goes_on(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    sensors = [SimSensor(Kind.BTHOME, PLAIN, "BTHome 0001", seed=1)]
    with (
        SimulatedBluetooth(sensors, bluez=False) as bt,
        start_in_thread([RegisterBank(1, holding=[2305], size=16)]) as meter,
    ):
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(retry_max="1s")
            + f"- {{name: lan, type: modbus_tcp, host: 127.0.0.1, port: {meter.port}}}\n",
            devices=f"- {{name: plain, bus: radio, address: '{PLAIN}', interval: 1s, "
            "stale_after: 2s}\n"
            "- {name: meter, bus: lan, interval: 1s, points: "
            "[{name: voltage, address: 0, type: u16, scale: 0.1, unit: V}]}\n",
        )
        gateway = start_gateway(gateways, tmp_path, config, {"DBUS_SYSTEM_BUS_ADDRESS": bt.address})
        assert gateway.wait_for_log("BlueZ (bluetoothd) is not running", timeout=20), gateway.log()
        assert fleet.wait_for(has_readings({"meter": 3}), timeout=20), gateway.log()
        bt.start_bluez()
        assert gateway.wait_for_log("scanning on hci0 again", timeout=20), gateway.log()
        assert fleet.wait_for(has_readings({"plain": 1}), timeout=20), gateway.log()
        assert bt.simulator is not None
        bt.call(bt.simulator.power, False)
        assert gateway.wait_for_log("adapter hci0 is powered off", timeout=20), gateway.log()
        bt.call(bt.simulator.power, True)
        before = len(readings_of(fleet, "plain"))
        assert fleet.wait_for(has_readings({"plain": before + 1}), timeout=20), gateway.log()
        assert gateway.stop() == 0
    log = gateway.log()
    assert log.count("BLE bus radio: BlueZ (bluetoothd) is not running") == 1, log
    assert log.count("BLE bus radio: adapter hci0 is powered off") == 1, log
    # Scanning resumed gives the sensor its staleness limit afresh: not missing at once.
    assert "not heard since the scan started" not in log, log
    assert "Traceback" not in log, log


@pytest.mark.parametrize(
    "case",
    [
        # An adapter without an advertisement monitor (AdvertisementMonitorManager1), like a
        # BlueZ before 5.56 or without --experimental.
        ({"scanning": "passive"}, None, "passive scanning is not supported here", False),
        ({"adapter": "hci1"}, None, "adapter hci1 not found (bluetoothctl list", True),
        ({}, "unix:path=/nonexistent/system_bus_socket", "no D-Bus system bus", True),
    ],
)
def test_an_adapter_that_cannot_scan_is_one_clear_line(
    broker: MosquittoBroker,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    case: tuple[dict[str, str], str | None, str, bool],
):
    bus, bus_address, line, monitors = case
    sensors = [SimSensor(Kind.BTHOME, PLAIN, "BTHome 0001", seed=1)]
    with SimulatedBluetooth(sensors, monitors=monitors) as bt:
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(retry_max="1s", **bus),
            devices=f"- {{name: plain, bus: radio, address: '{PLAIN}'}}\n",
        )
        env = {"DBUS_SYSTEM_BUS_ADDRESS": bus_address or bt.address}
        gateway = start_gateway(gateways, tmp_path, config, env)
        assert gateway.wait_for_log("device plain failed", timeout=20), gateway.log()
        assert gateway.stop() == 0
    log = gateway.log()
    assert log.count(f"BLE bus radio: {line}") == 1, log
    assert "Traceback" not in log, log


def test_one_connection_slot_serves_the_good_gatt_sensor_between_a_hanging_ones_timeouts(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    good = "F0:F0:00:00:00:0C"
    sensors = [
        SimSensor(Kind.GATT, GATT, "GATT thermo 0009", seed=9),
        SimSensor(Kind.GATT, good, "GATT thermo 000C", seed=12),
    ]
    with SimulatedBluetooth(sensors) as bt:
        assert bt.simulator is not None
        simulator = bt.simulator
        bt.call(simulator.set_connect, GATT, "hang")
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(connect_timeout="1s", max_connections="1"),
            devices=GATT_DEVICE
            + f"- {{name: good, bus: radio, address: '{good}', interval: 1s, points: "
            "[{name: battery, characteristic: '2a19', type: u8, unit: '%'}]}\n",
        )
        gateway = start_gateway(gateways, tmp_path, config, {"DBUS_SYSTEM_BUS_ADDRESS": bt.address})
        assert fleet.wait_for(has_readings({"good": 3}), timeout=40), gateway.log()
        assert bt.call(lambda: simulator.devices[GATT].connects) >= 2
        # Never two connections at once: each of the good sensor's polls waited its turn.
        assert bt.call(lambda: simulator.links.peak) == 1
        assert not readings_of(fleet, "gatt")
        assert gateway.stop() == 0
    assert fleet.units(readings_of(fleet, "good")[-1])["battery"] == "%"


def test_the_fleet_and_home_assistant_learn_what_each_sensor_says_it_is(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    """The parser's model, name and device classes reach the retained description and Home
    Assistant's discovery configs, though the config names none of them."""
    sensors = [
        SimSensor(Kind.BTHOME, PLAIN, "BTHome 0001", seed=1),
        SimSensor(Kind.RUUVI, RUUVI, "Ruuvi 0003", seed=3),
    ]
    with SimulatedBluetooth(sensors) as bt:
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(),
            devices=f"- {{name: plain, bus: radio, address: '{PLAIN}', interval: 1s}}\n"
            f"- {{name: ruuvi, bus: radio, address: '{RUUVI}', interval: 1s}}\n",
        ).replace("buffer:\n", "homeassistant:\n  discovery: true\nbuffer:\n", 1)
        gateway = start_gateway(gateways, tmp_path, config, {"DBUS_SYSTEM_BUS_ADDRESS": bt.address})
        assert fleet.wait_for(has_readings({"plain": 2, "ruuvi": 2}), timeout=40), gateway.log()
        assert gateway.stop() == 0
    # Retained: whoever subscribes later is told what the sensor is.
    with CheckedFleet(broker.port, topic="fieldgate/gw-test/devices/ruuvi/description") as late:
        assert late.wait_for(lambda f: bool(f.messages()), timeout=10)
        retained = late.messages()[-1]
    assert retained.retain
    assert retained.json()["model"] == "RuuviTag"
    plain = fleet.description(readings_of(fleet, "plain")[-1])
    ruuvi = fleet.description(readings_of(fleet, "ruuvi")[-1])
    assert (plain["kind"], plain["model"], plain["device_name"]) == (
        "ble",
        "BTHome sensor",
        "BTHome 0001 0001",
    )
    assert (ruuvi["manufacturer"], ruuvi["model"], ruuvi["device_name"]) == (
        "Ruuvi Innovations Ltd.",
        "RuuviTag",
        "RuuviTag 0003",
    )
    classes = {p["name"]: p.get("device_class") for p in ruuvi["points"]}
    assert classes["temperature"] == "temperature"
    assert classes["humidity"] == "humidity"
    assert classes["pressure"] == "pressure"
    assert classes["rssi"] == "signal_strength"
    assert {p["name"]: p.get("device_class") for p in plain["points"]}["battery"] == "battery"

    discovered: dict[str, dict[str, Any]] = {}
    for message in fleet.messages(lambda t: t.startswith("homeassistant/sensor/")):
        if message.payload:
            discovered[message.topic] = message.json()
    node = "homeassistant/sensor/fieldgate_gw-test_{}/{}/config"
    humidity = discovered[node.format("ruuvi", "humidity")]
    assert humidity["device_class"] == "humidity"
    assert humidity["unit_of_measurement"] == "%"
    assert humidity["device"]["manufacturer"] == "Ruuvi Innovations Ltd."
    assert humidity["device"]["model"] == "RuuviTag (RuuviTag 0003)"
    assert humidity["device"]["name"] == "ruuvi"
    assert discovered[node.format("ruuvi", "pressure")]["device_class"] == "pressure"
    assert discovered[node.format("plain", "temperature")]["device_class"] == "temperature"
    assert discovered[node.format("plain", "battery")]["device_class"] == "battery"
    assert discovered[node.format("plain", "rssi")]["device_class"] == "signal_strength"
    # A parser's class Home Assistant's sensor does not have is left out, not sent.
    assert "device_class" not in discovered[node.format("ruuvi", "acceleration_x")]


@pytest.mark.parametrize(
    "case", [(Kind.PVVX_ENCRYPTED, "atc"), (Kind.MIBEACON_ENCRYPTED, "xiaomi")]
)
def test_an_encrypted_atc_or_mibeacon_sensor_is_read_with_its_key_and_reported_with_another(
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    case: tuple[Kind, str],
):
    kind, fmt = case
    key_file = tmp_path / "bind.key"
    key_file.write_text(DEMO_BIND_KEY.hex() + "\n")
    wrong = tmp_path / "wrong.key"
    wrong_key = "00112233445566778899aabbccddeeff"
    wrong.write_text(wrong_key)
    right_address, wrong_address = "A4:C1:38:00:01:01", "A4:C1:38:00:01:02"
    sensors = [
        SimSensor(kind, right_address, "LYWSD03MMC", seed=21),
        SimSensor(kind, wrong_address, "LYWSD03MMC", seed=22),
    ]
    with SimulatedBluetooth(sensors) as bt:
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(),
            devices=f"- {{name: keyed, bus: radio, address: '{right_address}', interval: 1s, "
            f"format: {fmt}, bind_key_file: {key_file}}}\n"
            f"- {{name: wrong-key, bus: radio, address: '{wrong_address}', interval: 1s, "
            f"bind_key_file: {wrong}}}\n",
        )
        gateway = start_gateway(gateways, tmp_path, config, {"DBUS_SYSTEM_BUS_ADDRESS": bt.address})
        # MiBeacon sends one measurement an advertisement: enough readings to see them all.
        assert fleet.wait_for(has_readings({"keyed": 4}), timeout=40), gateway.log()
        assert gateway.wait_for_log("device wrong-key failed", timeout=10), gateway.log()
        assert gateway.process is not None
        assert gateway.process.poll() is None
        assert gateway.stop() == 0
        sent: list[dict[str, float]] = bt.call(lambda: list(bt.sensor(right_address).sent))
    readings = readings_of(fleet, "keyed")
    seen: set[str] = set()
    for reading in readings:
        for name, value in fleet.values(reading).items():
            if name in RESOLUTION:
                seen.add(name)
                assert any(abs(value - s[name]) < 1e-9 for s in sent if name in s), (name, value)
    assert seen >= {"temperature", "humidity", "battery"}, readings
    assert_wrong_key_reported_once(gateway.log(), fleet, wrong_key)
