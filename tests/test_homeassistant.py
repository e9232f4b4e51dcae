"""Home Assistant MQTT discovery: every payload uses only keys Home Assistant's MQTT sensor
documents, and for each point type a device class, unit and state class Home Assistant accepts
together; against a real broker, a sensor per point grouped by device, availability tied to the
gateway's status, and a device that leaves the config withdrawn after a restart."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker
from fieldgate_sim.template_meter import TemplateMeter

from drivers.host.config import HostMetric
from drivers.host.sources import UNIT_OF
from drivers.modbus.templates import load_templates
from gateway.config.loader import parse_config
from gateway.descriptions import Descriptions
from gateway.readings import (
    BufferedReading,
    DeviceIdentity,
    DeviceInfo,
    PointInfo,
    PointValue,
    Reading,
)
from gateway.upstream.homeassistant import Discovery
from tests.harness import GatewayProcess, gateway_yaml, start_gateway
from tests.wire import CheckedFleet

#: The MQTT sensor's configuration variables, as Home Assistant documents them
#: (home-assistant.io/integrations/sensor.mqtt; homeassistant/components/mqtt/abbreviations.py).
SENSOR_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "device_class", "enabled_by_default", "encoding", "entity_category",
    "entity_picture", "expire_after", "force_update", "icon", "json_attributes_template",
    "json_attributes_topic", "last_reset_value_template", "name", "object_id", "options",
    "origin", "payload_available", "payload_not_available", "platform", "qos", "state_class",
    "state_topic", "suggested_display_precision", "unique_id", "unit_of_measurement",
    "value_template",
}  # fmt: skip
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
#: DEVICE_CLASS_UNITS and DEVICE_CLASS_STATE_CLASSES of homeassistant/components/sensor/const.py
#: for the device classes fieldgate uses (units as Home Assistant's unit enums spell them).
UNITS: dict[str, set[str | None]] = {
    "voltage": {"µV", "mV", "V", "kV", "MV"},
    "current": {"mA", "A"},
    "power": {"W", "kW", "MW", "GW", "TW"},
    "apparent_power": {"VA"},
    "reactive_power": {"var"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "temperature": {"°C", "°F", "K"},
    "temperature_delta": {"°C", "°F", "K"},
    "power_factor": {"%", None},
    "water": {"CCF", "ft³", "m³", "gal", "L"},
    "gas": {"CCF", "ft³", "m³"},
    "volume": {"L", "mL", "gal", "fl. oz.", "m³", "ft³", "CCF"},
    "volume_flow_rate": {"m³/h", "ft³/min", "L/min", "gal/min", "mL/s"},
    "pressure": {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
    "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB"},
    "duration": {"d", "h", "min", "s", "ms"},
    "humidity": {"%"},
    "battery": {"%"},
    "signal_strength": {"dB", "dBm"},
}
STATE_CLASSES: dict[str, set[str]] = {
    "energy": {"total", "total_increasing"},
    "water": {"total", "total_increasing"},
    "gas": {"total", "total_increasing"},
    "volume": {"total", "total_increasing"},
    "data_size": {"measurement", "total", "total_increasing"},
    "duration": {"measurement", "total", "total_increasing"},
}
TEMPLATE = re.compile(
    r"^\{\{ value_json\['values'\]\[(\d+)\] if value_json\.layout == '([0-9a-f]{8})' "
    r"else this\.state \}\}$"
)


def discovery(config_text: str, state_file: Path) -> Discovery:
    config = parse_config(config_text)
    return Discovery(
        prefix="homeassistant",
        gateway_id=config.gateway.id,
        status_topic=f"fieldgate/{config.gateway.id}/status",
        reading_topic=f"fieldgate/{config.gateway.id}/devices/{{device}}/reading",
        devices=[device.info() for device in config.devices],
        state_file=state_file,
    )


def check_sensor(config: dict[str, Any], numeric: bool) -> None:
    """What Home Assistant's MQTT sensor accepts, key by key and class by class."""
    assert set(config) <= SENSOR_KEYS, set(config) - SENSOR_KEYS
    assert set(config["device"]) <= DEVICE_KEYS
    assert isinstance(config["device"]["identifiers"], list)
    assert TEMPLATE.match(config["value_template"]), config["value_template"]
    unit = config.get("unit_of_measurement")
    device_class = config.get("device_class")
    if not numeric:
        assert "state_class" not in config
        assert device_class is None
        return
    state_class = config["state_class"]
    if device_class is not None:
        assert unit in UNITS[device_class], (device_class, unit)
        assert state_class in STATE_CLASSES.get(device_class, {"measurement"}), config
    else:
        assert state_class in {"measurement", "total_increasing"}


def test_every_template_point_and_host_metric_is_a_sensor_home_assistant_accepts(
    tmp_path: Path,
):
    templates = load_templates()
    devices = "".join(
        f"  - {{name: {name}, bus: lan, unit_id: {i + 1}, template: {name}}}\n"
        for i, name in enumerate(sorted(templates))
    )
    text = (
        "gateway: {id: gw-ha}\nmqtt: {host: b}\nbuses:\n  - {name: lan, type: modbus_tcp, "
        "host: m}\n  - {name: box, type: host}\ndevices:\n"
        + devices
        + "  - {name: box, bus: box}\n"
    )
    found = discovery(text, tmp_path / "state.json")
    config = parse_config(text)
    classes: dict[str, str | None] = {}
    for device in config.devices:
        info = device.info()
        if info.kind == "host":
            points = [PointValue(metric.value, 1, UNIT_OF.get(metric)) for metric in HostMetric]
            texts: set[str] = set()
        else:
            points = [PointValue(p.name, 1, p.unit) for p in info.points]
            texts = {p.name for p in info.points if p.text}
        messages = found.announce(BufferedReading(1, Reading(device.name, 0, tuple(points))))
        assert len(messages) == len(points)
        for message, point in zip(messages, points, strict=True):
            assert message.retain
            sensor = json.loads(message.payload)
            check_sensor(sensor, numeric=point.name not in texts)
            classes[f"{device.name}.{point.name}"] = sensor.get("device_class")
            if sensor.get("device_class") == "energy":
                assert sensor["state_class"] == "total_increasing"
    assert classes["eastron-sdm630.import_active_energy"] == "energy"
    assert classes["eastron-sdm630.phase_1_power_factor"] == "power_factor"
    assert classes["eastron-sdm630.phase_1_voltage"] == "voltage"
    assert classes["box.soc_temperature"] == "temperature"


def test_a_device_or_point_that_leaves_is_withdrawn_across_restarts(tmp_path: Path):
    base = "gateway: {id: g}\nmqtt: {host: b}\nbuses: [{name: box, type: host}]\n"
    state = tmp_path / "state.json"
    before = discovery(base + "devices: [{name: a, bus: box}, {name: b, bus: box}]\n", state)
    for device in ("a", "b"):
        reading = Reading(device, 0, (PointValue("load_1m", 0.5), PointValue("uptime_s", 9, "s")))
        before.announce(BufferedReading(1, reading))
    before.save()
    after = discovery(base + "devices: [{name: a, bus: box}]\n", state)
    withdrawn = after.withdrawn_devices()
    assert {(m.topic, m.payload, m.retain) for m in withdrawn} == {
        ("homeassistant/sensor/fieldgate_g_b/load_1m/config", b"", True),
        ("homeassistant/sensor/fieldgate_g_b/uptime_s/config", b"", True),
    }
    # A point that left a device's layout is withdrawn when the new layout is announced.
    fewer = after.announce(BufferedReading(2, Reading("a", 0, (PointValue("load_1m", 1.0),))))
    assert [m.topic for m in fewer if not m.payload] == [
        "homeassistant/sensor/fieldgate_g_a/uptime_s/config"
    ]


def sensors(fleet: FleetSubscriber) -> dict[str, dict[str, Any]]:
    """The latest discovery config per topic; an empty payload removes it."""
    latest: dict[str, dict[str, Any]] = {}
    for message in fleet.messages(lambda t: t.startswith("homeassistant/")):
        if message.payload:
            latest[message.topic] = json.loads(message.payload)
        else:
            latest.pop(message.topic, None)
    return latest


def test_discovery_against_a_broker_and_a_meter(
    broker: MosquittoBroker, gateways: list[GatewayProcess], tmp_path: Path
):
    meter_points = len(load_templates()["eastron-sdm120"].points)
    with start_in_thread([TemplateMeter(1, "eastron-sdm120")]) as meter:
        text = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=f"- {{name: lan, type: modbus_tcp, host: 127.0.0.1, port: {meter.port}}}\n"
            "- {name: box, type: host}\n",
            devices="- {name: meter, bus: lan, interval: 1s, template: eastron-sdm120}\n"
            "- {name: box, bus: box, interval: 1s, metrics: [load_1m, uptime_s]}\n",
        ).replace("buffer:\n", "homeassistant:\n  discovery: true\nbuffer:\n", 1)
        with CheckedFleet(broker.port) as fleet:
            gateway = start_gateway(gateways, tmp_path, text)
            enough = lambda f: len(sensors(f)) == meter_points + 2  # noqa: E731
            assert fleet.wait_for(enough, timeout=30), gateway.log()
            assert fleet.wait_for(lambda f: len(f.readings()) >= 2, timeout=20)
            assert gateway.stop() == 0
            found = sensors(fleet)
            by_device: dict[str, set[str]] = {}
            for topic, config in found.items():
                check_sensor(config, numeric=True)
                assert config["availability_topic"] == "fieldgate/gw-test/status"
                by_device.setdefault(config["device"]["identifiers"][0], set()).add(topic)
            assert {d: len(t) for d, t in by_device.items()} == {
                "fieldgate_gw-test_meter": meter_points,
                "fieldgate_gw-test_box": 2,
            }
            energy = found[
                "homeassistant/sensor/fieldgate_gw-test_meter/import_active_energy/config"
            ]
            assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
            assert energy["device"]["manufacturer"] == "Eastron"
            # The template's index is the point's place in the reading the description names.
            reading = next(r for r in fleet.readings() if r["device"] == "meter")
            index, layout = TEMPLATE.match(energy["value_template"]).groups()  # type: ignore[union-attr]
            assert layout == reading["layout"]
            assert reading["values"][int(index)] == fleet.values(reading)["import_active_energy"]

            # The meter leaves the config: after the restart its sensors are withdrawn.
            gateway = start_gateway(
                gateways,
                tmp_path,
                text.replace(
                    "- {name: meter, bus: lan, interval: 1s, template: eastron-sdm120}\n", ""
                ),
            )
            assert fleet.wait_for(lambda f: len(sensors(f)) == 2, timeout=30), gateway.log()
            assert gateway.stop() == 0
    # Commands are off unless the config turns them on: the gateway subscribed to nothing.
    assert broker.subscriptions("fieldgate-gw-test") == []


def test_a_device_class_the_device_gives_is_announced_where_home_assistant_accepts_it(
    tmp_path: Path,
):
    info = DeviceInfo("s1", "radio", "ble")
    descriptions = Descriptions([info])
    found = Discovery(
        prefix="homeassistant",
        gateway_id="g",
        status_topic="fieldgate/g/status",
        reading_topic="fieldgate/g/devices/{device}/reading",
        devices=descriptions,
        state_file=tmp_path / "state.json",
    )
    points = (
        PointValue("humidity", 60.0, "%"),
        PointValue("pressure", 1013.0, "hPa"),
        PointValue("battery", 90, "%"),
        PointValue("rssi", -60, "dBm"),
        PointValue("opening", 1, None),
        PointValue("odd_battery", 2950, "mV"),
        PointValue("acceleration_x", 0.0, "m/s²"),
    )
    reading = BufferedReading(1, Reading("s1", 0, points))
    before = [json.loads(m.payload) for m in found.announce(reading)]
    # Before: only what the unit alone tells.
    assert [sensor.get("device_class") for sensor in before] == [
        None,
        "pressure",
        None,
        None,
        None,
        "voltage",
        None,
    ]
    assert before[0]["device"]["model"] == "ble"
    descriptions.identify(
        "s1",
        DeviceIdentity(
            manufacturer="Acme",
            model="TH-1",
            device_name="TH-1 0003",
            points=(
                PointInfo("humidity", "%", device_class="humidity"),
                PointInfo("pressure", "hPa", device_class="pressure"),
                PointInfo("battery", "%", device_class="battery"),
                PointInfo("rssi", "dBm", device_class="signal_strength"),
                PointInfo("opening", None, device_class="opening"),  # a binary sensor's
                PointInfo("odd_battery", "mV", device_class="battery"),  # not a unit HA takes
                PointInfo("acceleration_x", "m/s²", device_class="acceleration"),
            ),
        ),
    )
    after = [json.loads(m.payload) for m in found.announce(reading)]
    for sensor in after:
        check_sensor(sensor, numeric=True)
    assert [sensor.get("device_class") for sensor in after] == [
        "humidity",
        "pressure",
        "battery",
        "signal_strength",
        None,
        "voltage",  # by its unit, as before
        None,
    ]
    assert after[0]["device"] | {"identifiers": None} == {
        "identifiers": None,
        "name": "s1",
        "manufacturer": "Acme",
        "model": "TH-1 (TH-1 0003)",
    }
