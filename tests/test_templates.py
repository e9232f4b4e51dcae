"""Meter templates: each loads, stays inside the address space, has no overlapping points and
only valid types; a device uses one with overrides; and every template's values, read through
the driver from a simulated meter holding that template's register image, equal what the
simulated meter holds, point by point."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import pytest
from fieldgate_sim.modbus_server import start_in_thread
from fieldgate_sim.serial_line import start_serial_line_in_thread
from fieldgate_sim.template_meter import TemplateMeter
from pydantic import ValidationError

from drivers.modbus.config import ModbusDevice, ModbusTcpBus
from drivers.modbus.plan import plan_requests
from drivers.modbus.settings import (
    ModbusDeviceSettings,
    ModbusTcpBusSettings,
    RegisterType,
    ValueType,
)
from drivers.modbus.tcp import open_modbus_tcp_bus
from drivers.modbus.templates import TEMPLATE_DIR, Identification, load_templates
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.errors import DeviceTimeout
from gateway.readings import Quality
from tests.harness import REPO, run_fieldgate

TEMPLATES = sorted(load_templates())
#: What a meter's registers hold (bool is for coils and discrete inputs, which meters rarely
#: map): numbers of every width, text, enumerated states.
REGISTER_TYPES = set(ValueType) - {ValueType.BOOL}


def tcp_bus(port: int, **extra: object) -> ModbusTcpBusSettings:
    config = ModbusTcpBus.model_validate(
        {"name": "lan", "type": "modbus_tcp", "host": "127.0.0.1", "port": port, **extra}
    )
    settings: ModbusTcpBusSettings = settings_of(config)
    return settings


def template_device(name: str, template: str, unit_id: int = 1) -> ModbusDeviceSettings:
    config = ModbusDevice.model_validate(
        {"name": name, "bus": "lan", "unit_id": unit_id, "template": template}
    )
    settings: ModbusDeviceSettings = settings_of(config)
    return settings


def test_at_least_twelve_templates_one_file_each():
    assert len(TEMPLATES) >= 12
    assert sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml")) == TEMPLATES


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_is_sound(name: str):
    template = load_templates()[name]
    assert template.datasheet.title
    assert template.datasheet.revision
    used: set[tuple[RegisterType, int]] = set()
    for point in template.points:
        assert point.type in REGISTER_TYPES, point
        span = {
            (point.register_type, a)
            for a in range(point.address, point.address + point.register_count)
        }
        assert all(0 <= a <= 65535 for _, a in span)
        assert not span & used, f"{point.name} overlaps another point"
        used |= span
    points = [settings_of(point) for point in template.points]
    for request in plan_requests(points, template.max_gap, template.max_block):
        assert request.count <= template.max_block


@pytest.mark.parametrize("name", TEMPLATES)
async def test_template_values_read_from_the_simulator_equal_the_simulators(name: str):
    # Two units of the same meter behind one gateway, answering after a few milliseconds as
    # real meters do: each publishes its own values, point by point.
    meters = [TemplateMeter(unit, name) for unit in (1, 2)]
    for meter, delay in zip(meters, (0.002, 0.005), strict=True):
        meter.reply_delay_s = delay
    with start_in_thread(meters) as server:
        bus = tcp_bus(server.port)
        devices = [template_device(f"m{m.unit_id}", name, m.unit_id) for m in meters]
        async with open_modbus_tcp_bus(bus, devices, SystemClock()) as lan:
            readings = [await device.read() for device in lan.devices]
    template = load_templates()[name]
    for meter, reading in zip(meters, readings, strict=True):
        got = {p.name: p.value for p in reading.values}
        assert list(got) == [p.name for p in template.points]
        assert reading.quality is Quality.GOOD
        for point in template.points:
            meant = meter.values[point.name]
            if isinstance(meant, str):
                assert got[point.name] == meant, point.name
            else:
                assert got[point.name] == pytest.approx(meant, rel=1e-9), point.name
    assert meters[0].values != meters[1].values


def test_device_overrides_and_drops_template_points():
    device = ModbusDevice.model_validate(
        {
            "name": "m",
            "bus": "b",
            "template": "eastron-sdm120",
            "drop": ["frequency", "power_factor"],
            "points": [
                {
                    "name": "voltage",
                    "register": "input",
                    "address": 0,
                    "type": "f32",
                    "unit": "kV",
                    "scale": 0.001,
                },
                {"name": "extra", "register": "holding", "address": 20, "type": "u16"},
            ],
        }
    )
    names = [p.name for p in device.points]
    assert "frequency" not in names
    assert "power_factor" not in names
    assert names.count("voltage") == 1
    voltage = next(p for p in device.points if p.name == "voltage")
    assert (voltage.unit, voltage.scale) == ("kV", 0.001)
    assert names[-1] == "extra"
    assert device.max_block == load_templates()["eastron-sdm120"].max_block


def test_unknown_template_or_drop_is_one_clear_error():
    with pytest.raises(ValidationError, match="template 'sdm999' is not known; known templates"):
        ModbusDevice.model_validate({"name": "m", "bus": "b", "template": "sdm999"})
    with pytest.raises(ValidationError, match="drop: voltage_l9 not in template"):
        ModbusDevice.model_validate(
            {"name": "m", "bus": "b", "template": "eastron-sdm120", "drop": ["voltage_l9"]}
        )
    with pytest.raises(ValidationError, match="needs points, or a template"):
        ModbusDevice.model_validate({"name": "m", "bus": "b"})


async def test_simulator_cli_serves_a_template_meter_with_a_reply_delay():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fieldgate_sim",
        "modbus-tcp",
        "--port",
        "0",
        "--unit",
        "3",
        "--template",
        "xylem-magflux",
        "--reply-delay",
        "4",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        match = re.fullmatch(r"serving xylem-magflux meter unit 3 on 127\.0\.0\.1:(\d+)\n", line)
        assert match is not None, line
        bus = tcp_bus(int(match[1]))
        device = template_device("water", "xylem-magflux", unit_id=3)
        async with open_modbus_tcp_bus(bus, [device], SystemClock()) as lan:
            reading = await lan.devices[0].read()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    # The CLI seeds a meter by its port's index and unit id (0 * 256 + 3).
    meant = TemplateMeter(3, "xylem-magflux", seed=3).values
    assert {p.name: p.value for p in reading.values} == pytest.approx(meant, rel=1e-9)


async def test_a_reply_delay_longer_than_the_timeout_is_a_timeout_and_a_short_one_is_not():
    meter = TemplateMeter(1, "eastron-sdm120")
    with start_in_thread([meter]) as server:
        bus = tcp_bus(server.port, timeout="100ms")
        device = template_device("m", "eastron-sdm120")
        async with open_modbus_tcp_bus(bus, [device], SystemClock()) as lan:
            server.set_reply_delay(1, 2.0)
            with pytest.raises(DeviceTimeout):
                await lan.devices[0].read()
        server.set_reply_delay(1, 0.003)
        async with open_modbus_tcp_bus(bus, [device], SystemClock()) as lan:
            reading = await lan.devices[0].read()
    assert reading.values[0].value == pytest.approx(meter.values[reading.values[0].name])


def test_scan_identifies_template_meters_by_their_rule():
    # Rules of every width: a u32 ("SunS"), a u16 (device kind), a u64 (Socomec's "SOCO", one
    # character a register).
    meters = [
        TemplateMeter(4, "sunspec-inverter-float"),
        TemplateMeter(5, "aquametro-calec-st"),
        TemplateMeter(6, "socomec-countis-e27"),
    ]
    with start_serial_line_in_thread(meters, baudrate=19200) as line:
        result = run_fieldgate(
            "scan", "--serial", line.path, "--baud", "19200", "--units", "4-6", "--timeout", "100ms"
        )
    assert result.returncode == 0, result.stderr
    units = {row.split()[0]: row.split()[-1] for row in result.stdout.splitlines()[2:]}
    assert units == {
        "4": "sunspec-inverter-float",
        "5": "aquametro-calec-st",
        "6": "socomec-countis-e27",
    }


def test_an_identification_rule_reads_a_number():
    with pytest.raises(ValidationError, match="an identification register holds a number"):
        Identification.model_validate({"address": 0, "type": "string", "equals": 1})


def test_devices_of_one_template_share_its_point_models():
    # Memory per device: the frozen point models of a template are not copied per device.
    a, b = (
        ModbusDevice.model_validate({"name": n, "bus": "lan", "template": "eastron-sdm630"})
        for n in ("a", "b")
    )
    assert a.points
    assert all(p is q for p, q in zip(a.points, b.points, strict=True))
