"""What a running gateway keeps of a Modbus config: the settings of each device and bus carry
the validated values, whether the gaps are to be learned (``max_gap`` given neither by the
device nor by its template), and the template's meter; and they come out of a config's settings
tree, carried as the config reader's child carries it, equal to what the models say."""

from __future__ import annotations

import marshal
from typing import Any

import pytest

from drivers.modbus.config import ModbusDevice, ModbusRtuBus
from drivers.modbus.settings import (
    ByteOrder,
    ModbusDeviceSettings,
    ModbusPointSettings,
    ModbusRtuBusSettings,
    Parity,
    RegisterType,
    ValueType,
    WordOrder,
)
from drivers.modbus.templates import load_templates
from gateway.config.handover import settings_of, settings_tree
from gateway.config.loader import parse_config
from gateway.readings import DeviceInfo, PointInfo
from gateway.settings import settings_from_tree

POINTS = [
    {"name": "a", "address": 0, "type": "u16", "unit": "V"},
    {"name": "b", "address": 4, "type": "enum", "values": {1: "on", 0: "off"}},
]


def device_settings(**fields: Any) -> ModbusDeviceSettings:
    config = ModbusDevice.model_validate({"name": "m", "bus": "lan", **fields})
    settings: ModbusDeviceSettings = settings_of(config)
    return settings


def test_a_device_s_settings_hold_its_validated_values():
    settings = device_settings(unit_id=7, interval="30s", points=POINTS)
    assert settings == ModbusDeviceSettings(
        name="m",
        bus="lan",
        interval=30.0,
        unit_id=7,
        max_gap=0,
        max_block=125,
        template=None,
        drop=(),
        points=(
            ModbusPointSettings(
                name="a",
                address=0,
                register_type=RegisterType.HOLDING,
                type=ValueType.U16,
                word_order=WordOrder.BIG,
                byte_order=ByteOrder.BIG,
                bit=None,
                scale=1.0,
                offset=0.0,
                unit="V",
                length=None,
                values=None,
                writable=False,
                min=None,
                max=None,
            ),
            ModbusPointSettings(
                name="b",
                address=4,
                register_type=RegisterType.HOLDING,
                type=ValueType.ENUM,
                word_order=WordOrder.BIG,
                byte_order=ByteOrder.BIG,
                bit=None,
                scale=1.0,
                offset=0.0,
                unit=None,
                length=None,
                values={1: "on", 0: "off"},
                writable=False,
                min=None,
                max=None,
            ),
        ),
        learn_max_gap=True,
        manufacturer=None,
        model=None,
        medium=None,
    )
    assert [p.register_count for p in settings.points] == [1, 1]


@pytest.mark.parametrize(
    ("fields", "learn", "max_gap"),
    [
        ({"points": POINTS}, True, 0),
        # Given, even as the default's value: the user said "never read across a gap".
        ({"points": POINTS, "max_gap": 0}, False, 0),
        ({"points": POINTS, "max_gap": 5}, False, 5),
        # The template says nothing of gaps: they are learned.
        ({"template": "xylem-magflux"}, True, 0),
        # The template gives one; the device's own wins over it.
        ({"template": "eastron-sdm630"}, False, 10),
        ({"template": "eastron-sdm630", "max_gap": 2}, False, 2),
    ],
)
def test_gaps_are_learned_only_where_no_max_gap_was_given(
    fields: dict[str, Any], learn: bool, max_gap: int
):
    settings = device_settings(**fields)
    assert (settings.learn_max_gap, settings.max_gap) == (learn, max_gap)


def test_a_template_device_describes_its_meter_without_reading_templates():
    settings = device_settings(template="eastron-sdm120", drop=["frequency"])
    template = load_templates()["eastron-sdm120"]
    info = settings.info()
    assert info == DeviceInfo(
        "m",
        "lan",
        "modbus",
        template="eastron-sdm120",
        manufacturer="Eastron",
        model="SDM120-Modbus",
        medium="electricity",
        points=info.points,
    )
    assert info.points == tuple(
        # Numbers only in an SDM120, none writable.
        PointInfo(p.name, p.unit)
        for p in template.points
        if p.name != "frequency"
    )
    assert settings.drop == ("frequency",)


def test_a_text_point_is_described_as_text():
    (a, b) = device_settings(points=POINTS).info().points
    assert (a.text, b.text) == (False, True)


def test_an_rtu_bus_s_settings_time_its_line():
    config = ModbusRtuBus.model_validate(
        {"name": "rs485", "type": "modbus_rtu", "port": "/dev/ttyUSB0", "parity": "E"}
    )
    settings = settings_of(config)
    assert isinstance(settings, ModbusRtuBusSettings)
    assert (settings.baudrate, settings.parity, settings.data_bits, settings.stop_bits) == (
        9600,
        Parity.EVEN,
        8,
        1,
    )
    # 8E1: 11 bits a character; 3.5 characters of silence.
    assert settings.char_time == pytest.approx(11 / 9600)
    assert settings.silence == pytest.approx(3.5 * 11 / 9600)
    fast = settings_of(config.model_copy(update={"baudrate": 115200}))
    assert fast.silence == 0.00175  # the specification's fixed value above 19200 baud


CONFIG = """\
gateway: {id: test}
mqtt: {host: 127.0.0.1}
buffer: {path: /tmp/fieldgate-test-settings.db, max_size: 1MB}
buses:
  - {name: lan, type: modbus_tcp, host: 127.0.0.1}
  - {name: rs485, type: modbus_rtu, port: /dev/ttyUSB0, baudrate: 19200, parity: E}
devices:
  - {name: learns, bus: lan, points: [{name: a, address: 0, type: u16}]}
  - {name: told, bus: lan, max_gap: 0, points: [{name: a, address: 0, type: u16}]}
  - {name: sdm1, bus: rs485, unit_id: 1, template: eastron-sdm630}
  - {name: sdm2, bus: rs485, unit_id: 2, template: eastron-sdm630}
  - {name: water, bus: rs485, unit_id: 3, template: xylem-magflux, max_gap: 4}
  - {name: flow, bus: rs485, unit_id: 4, template: xylem-magflux}
"""


def test_a_config_s_settings_tree_rebuilds_equal_settings():
    # As `run` gets them: the tree written where the models are, carried by marshal, built
    # here from the tree alone.
    config = parse_config(CONFIG)
    tree = marshal.loads(marshal.dumps(settings_tree(config)))
    settings = settings_from_tree(tree)
    assert settings.buses == tuple(settings_of(bus) for bus in config.buses)
    assert settings.devices == tuple(settings_of(device) for device in config.devices)
    learning = {
        d.name: d.learn_max_gap for d in settings.devices if isinstance(d, ModbusDeviceSettings)
    }
    assert learning == {
        "learns": True,
        "told": False,
        "sdm1": False,
        "sdm2": False,
        "water": False,
        "flow": True,
    }
    sdm1, sdm2 = settings.devices_on("rs485")[:2]
    assert isinstance(sdm1, ModbusDeviceSettings)
    assert isinstance(sdm2, ModbusDeviceSettings)
    # Meters of one template hold one set of point settings, as they held one of models.
    assert sdm1.points == sdm2.points
    assert all(p is q for p, q in zip(sdm1.points, sdm2.points, strict=True))
