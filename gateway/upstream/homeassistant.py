"""Home Assistant MQTT discovery (``homeassistant: {discovery: true}``): one sensor per point,
grouped by device, read straight from the gateway's reading messages.

A sensor is announced with a retained config on ``<prefix>/sensor/<node>/<point>/config`` when
the forwarder first sends its device's description in a session (so a host device's points,
known only from its readings, are announced too). Its ``value_template`` picks the point's
place in the reading's ``values``, guarded by the layout id: a reading of another layout (a
replay from an older config) leaves the sensor's state as it was (``this``, the entity's own
state, which Home Assistant's MQTT value templates are given: mqtt/models.py,
MqttValueTemplate). Availability follows the
gateway's retained status. What was announced is kept in a small state file beside the buffer,
so a device (or point) that left the config is removed (an empty retained config) after a
restart or a reload.

Keys, device classes, units and state classes are those Home Assistant's MQTT sensor documents
(checked in tests/test_homeassistant.py against tables taken from Home Assistant's source).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from gateway.descriptions import Descriptions
from gateway.readings import BufferedReading, DeviceInfo, PointInfo
from gateway.upstream.json_dialect import layout_id as layout_id_of
from gateway.upstream.messages import OutgoingMessage

log = logging.getLogger(__name__)

MEASUREMENT = "measurement"
TOTAL_INCREASING = "total_increasing"

#: unit -> (device class, state class); units Home Assistant accepts for that device class.
_BY_UNIT: dict[str, tuple[str | None, str]] = {
    "V": ("voltage", MEASUREMENT),
    "mV": ("voltage", MEASUREMENT),
    "kV": ("voltage", MEASUREMENT),
    "A": ("current", MEASUREMENT),
    "mA": ("current", MEASUREMENT),
    "W": ("power", MEASUREMENT),
    "kW": ("power", MEASUREMENT),
    "MW": ("power", MEASUREMENT),
    "VA": ("apparent_power", MEASUREMENT),
    "var": ("reactive_power", MEASUREMENT),
    # Energy counters only count up (a meter exchange starts again at zero, which
    # total_increasing takes as a new cycle).
    "Wh": ("energy", TOTAL_INCREASING),
    "kWh": ("energy", TOTAL_INCREASING),
    "MWh": ("energy", TOTAL_INCREASING),
    "GJ": ("energy", TOTAL_INCREASING),
    # Reactive energy has no device class in the Home Assistant versions checked.
    "varh": (None, TOTAL_INCREASING),
    "kvarh": (None, TOTAL_INCREASING),
    "Hz": ("frequency", MEASUREMENT),
    "°C": ("temperature", MEASUREMENT),
    "°F": ("temperature", MEASUREMENT),
    "K": ("temperature", MEASUREMENT),
    "m³/h": ("volume_flow_rate", MEASUREMENT),
    "L/min": ("volume_flow_rate", MEASUREMENT),
    "bar": ("pressure", MEASUREMENT),
    "mbar": ("pressure", MEASUREMENT),
    "hPa": ("pressure", MEASUREMENT),
    "Pa": ("pressure", MEASUREMENT),
    "kPa": ("pressure", MEASUREMENT),
    "B": ("data_size", MEASUREMENT),
    "s": ("duration", MEASUREMENT),
    "min": ("duration", MEASUREMENT),
    "h": ("duration", MEASUREMENT),
    "d": ("duration", MEASUREMENT),
}
#: A counted volume, by what the meter measures.
_VOLUME_BY_MEDIUM = {"water": "water", "gas": "gas"}
_PRESSURES = frozenset({"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"})
_MASS_CONCENTRATION = frozenset({"µg/m³"})
#: Device classes a point may be given (by its device: a BLE parser's) that Home Assistant's
#: sensor knows, with the units it accepts for each (DEVICE_CLASS_UNITS of
#: homeassistant/components/sensor/const.py; with another unit it refuses the whole config).
#: A class not here (a binary sensor's "opening", a parser's "packet_id") is left out.
_CLASS_UNITS: dict[str, frozenset[str | None]] = {
    "temperature": frozenset({"°C", "°F", "K"}),
    "humidity": frozenset({"%"}),
    "moisture": frozenset({"%"}),
    "battery": frozenset({"%"}),
    "voltage": frozenset({"µV", "mV", "V", "kV", "MV"}),
    "current": frozenset({"mA", "A"}),
    "power": frozenset({"W", "kW", "MW", "GW", "TW"}),
    "energy": frozenset({"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh"}),
    "pressure": _PRESSURES,
    "atmospheric_pressure": _PRESSURES,
    "illuminance": frozenset({"lx"}),
    "signal_strength": frozenset({"dB", "dBm"}),
    "carbon_dioxide": frozenset({"ppm"}),
    "carbon_monoxide": frozenset({"ppm"}),
    "pm1": _MASS_CONCENTRATION,
    "pm25": _MASS_CONCENTRATION,
    "pm10": _MASS_CONCENTRATION,
    "volatile_organic_compounds": _MASS_CONCENTRATION,
    "volatile_organic_compounds_parts": frozenset({"ppm", "ppb"}),
    "conductivity": frozenset({"S/cm", "mS/cm", "µS/cm"}),
    "distance": frozenset({"mm", "cm", "m", "km", "in", "ft", "yd", "mi"}),
    "speed": frozenset({"m/s", "km/h", "mm/s", "ft/s", "mph", "kn"}),
    "frequency": frozenset({"Hz", "kHz", "MHz", "GHz"}),
    "duration": frozenset({"d", "h", "min", "s", "ms"}),
}
#: Of those, the classes whose state only counts up.
_COUNTED = frozenset({"energy"})


def classify(
    point: str, unit: str | None, medium: str | None, told: str | None = None
) -> tuple[str | None, str]:
    """(device class, state class) of a numeric point; ``told``: the class its device or
    config gives it, taken where Home Assistant accepts it with ``unit``."""
    if told is not None and unit in _CLASS_UNITS.get(told, ()):
        return told, TOTAL_INCREASING if told in _COUNTED else MEASUREMENT
    if "power_factor" in point and unit in {None, "%"}:
        return "power_factor", MEASUREMENT
    if unit in {"m³", "L"}:
        return _VOLUME_BY_MEDIUM.get(medium or "", "volume"), TOTAL_INCREASING
    if unit == "K" and ("difference" in point or "delta" in point):
        return "temperature_delta", MEASUREMENT
    if unit is not None and unit in _BY_UNIT:
        return _BY_UNIT[unit]
    return None, MEASUREMENT


def _topic_level(text: str) -> str:
    """Discovery's node and object ids take letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class Discovery:
    """What to announce to (and withdraw from) Home Assistant, and what was announced."""

    def __init__(
        self,
        *,
        prefix: str,
        gateway_id: str,
        status_topic: str,
        reading_topic: str,
        devices: Descriptions | Iterable[DeviceInfo],
        state_file: Path,
    ) -> None:
        """``reading_topic``: the reading topic with ``{device}`` where the device's name goes.
        ``devices``: their descriptions as they are now (the dialect's), or as configured."""
        self._prefix = prefix
        self._gateway_id = gateway_id
        self._status_topic = status_topic
        self._reading_topic = reading_topic
        self._devices = devices if isinstance(devices, Descriptions) else Descriptions(devices)
        self._state_file = state_file
        #: Device -> the config topics announced for it (from the state file, then updated).
        self.announced: dict[str, list[str]] = _load(state_file)
        self.changed = False

    def node(self, device: str) -> str:
        return _topic_level(f"fieldgate_{self._gateway_id}_{device}")

    def config_topic(self, device: str, point: str) -> str:
        return f"{self._prefix}/sensor/{self.node(device)}/{_topic_level(point)}/config"

    def withdrawn_devices(self) -> list[OutgoingMessage]:
        """Empty retained configs for every sensor of a device no longer configured."""
        gone = [device for device in self.announced if self._devices.get(device) is None]
        messages = [
            OutgoingMessage(topic, b"", retain=True)
            for device in gone
            for topic in self.announced.pop(device)
        ]
        self.changed = self.changed or bool(gone)
        return messages

    def announce(self, buffered: BufferedReading) -> list[OutgoingMessage]:
        """The sensors of the reading's device for readings of its layout, and the withdrawal
        of those announced before that this layout no longer has."""
        device = buffered.reading.device
        points = [(point.name, point.unit) for point in buffered.reading.values]
        layout_id = layout_id_of(tuple(points))
        info = self._devices.get(device)
        if info is None:
            return []  # a replayed reading of a device no longer configured: not announced
        configured: Mapping[str, PointInfo] = {p.name: p for p in info.points}
        messages: list[OutgoingMessage] = []
        topics: list[str] = []
        for index, (point, unit) in enumerate(points):
            topic = self.config_topic(device, point)
            topics.append(topic)
            config = self.sensor_config(
                info, point, unit, index, layout_id, configured=configured.get(point)
            )
            messages.append(
                OutgoingMessage(topic, json.dumps(config, ensure_ascii=False).encode(), retain=True)
            )
        messages += [
            OutgoingMessage(topic, b"", retain=True)
            for topic in self.announced.get(device, [])
            if topic not in topics
        ]
        if self.announced.get(device) != topics:
            self.announced[device] = topics
            self.changed = True
        return messages

    def sensor_config(
        self,
        info: DeviceInfo,
        point: str,
        unit: str | None,
        index: int,
        layout_id: str,
        *,
        configured: PointInfo | None = None,
    ) -> dict[str, object]:
        """One sensor's discovery config, in Home Assistant's documented (unabbreviated) keys."""
        config: dict[str, object] = {
            "name": point.replace("_", " "),
            "unique_id": f"{self.node(info.name)}_{_topic_level(point)}",
            "state_topic": self._reading_topic.format(device=info.name),
            "value_template": (
                f"{{{{ value_json['values'][{index}] if value_json.layout == '{layout_id}' "
                "else this.state }}"
            ),
            "availability_topic": self._status_topic,
            "availability_template": "{{ value_json.state }}",
            "payload_available": "online",
            "payload_not_available": "offline",
            "qos": 1,
            "device": {
                "identifiers": [self.node(info.name)],
                # The configured name: the one the user chose (the device's own is the model's
                # detail, below).
                "name": info.name,
                "manufacturer": info.manufacturer or "fieldgate",
                "model": _model(info),
            },
        }
        if unit is not None:
            config["unit_of_measurement"] = unit
        if configured is None or not configured.text:
            told = configured.device_class if configured is not None else None
            device_class, state_class = classify(point, unit, info.medium, told)
            if device_class is not None:
                config["device_class"] = device_class
            config["state_class"] = state_class
        return config

    def save(self) -> None:
        """Write what was announced (blocking: run it off the event loop)."""
        temporary = self._state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.announced, indent=1, sort_keys=True))
        temporary.replace(self._state_file)
        self.changed = False


def _model(info: DeviceInfo) -> str:
    """The model, with the name the device gives itself where that says more (a BLE parser's
    "RuuviTag" of the sensor calling itself "Ruuvi 3A5F")."""
    model = info.model or info.template or info.kind
    if info.device_name is None or info.device_name == model:
        return model
    return f"{model} ({info.device_name})"


def _load(path: Path) -> dict[str, list[str]]:
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s cannot be read (%s): devices removed earlier stay announced", path, exc)
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {
        str(device): [str(topic) for topic in topics]
        for device, topics in loaded.items()
        if isinstance(topics, list)
    }
