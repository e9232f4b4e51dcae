"""Meter templates: each loads, stays inside the address space, has no overlapping points and
only valid types; a device uses one with overrides; and every template's values, read through
the driver from a simulated meter holding that template's register image, equal what the
simulated meter holds, point by point."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from fieldgate_sim.modbus_server import RegisterBank, start_in_thread
from pydantic import ValidationError

from drivers.modbus.config import (
    REGISTER_COUNT,
    ModbusDevice,
    ModbusPoint,
    ModbusTcpBus,
    RegisterType,
    ValueType,
    WordOrder,
)
from drivers.modbus.plan import plan_requests
from drivers.modbus.tcp import open_modbus_tcp_bus
from drivers.modbus.templates import TEMPLATE_DIR, load_templates
from gateway.clock import SystemClock

TEMPLATES = sorted(load_templates())
FORMATS = {
    ValueType.U16: ">H",
    ValueType.I16: ">h",
    ValueType.U32: ">I",
    ValueType.I32: ">i",
    ValueType.U64: ">Q",
    ValueType.I64: ">q",
    ValueType.F32: ">f",
    ValueType.F64: ">d",
}


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
        assert point.type in FORMATS, point
        span = {
            (point.register_type, a)
            for a in range(point.address, point.address + point.register_count)
        }
        assert all(0 <= a <= 65535 for _, a in span)
        assert not span & used, f"{point.name} overlaps another point"
        used |= span
    for request in plan_requests(template.points, template.max_gap, template.max_block):
        assert request.count <= template.max_block


def value_for(point: ModbusPoint, index: int) -> int | float:
    """A distinct raw value that fits the point's type."""
    if point.type is ValueType.F32:
        value: float = struct.unpack(">f", struct.pack(">f", 100.0 + index * 1.25))[0]
        return value
    if point.type is ValueType.F64:
        return 1000.0 + index * 0.5
    if point.type in {ValueType.I16, ValueType.I32, ValueType.I64}:
        return -(index + 1) * 7 if index % 2 else (index + 1) * 9
    return (index + 1) * 11


def image_of(points: list[ModbusPoint]) -> tuple[dict[RegisterType, dict[int, int]], list[Any]]:
    """Register images holding a value for every point, encoded with struct (not the
    decoder), and the values the meter means."""
    tables: dict[RegisterType, dict[int, int]] = {RegisterType.HOLDING: {}, RegisterType.INPUT: {}}
    meant: list[Any] = []
    for index, point in enumerate(points):
        raw = value_for(point, index)
        data = struct.pack(FORMATS[point.type], raw)
        words = [data[i] << 8 | data[i + 1] for i in range(0, len(data), 2)]
        if point.word_order is WordOrder.LITTLE:
            words.reverse()
        for offset, word in enumerate(words):
            tables[point.register_type][point.address + offset] = word
        meant.append(raw * point.scale + point.offset)
        assert REGISTER_COUNT[point.type] == len(words)
    return tables, meant


@pytest.mark.parametrize("name", TEMPLATES)
async def test_template_values_read_from_the_simulator_equal_the_simulators(name: str):
    template = load_templates()[name]
    tables, meant = image_of(template.points)
    size = 1 + max(max(t, default=0) for t in tables.values())

    def table(kind: RegisterType) -> list[int]:
        return [tables[kind].get(a, 0) for a in range(size)]

    bank = RegisterBank(
        1, holding=table(RegisterType.HOLDING), input=table(RegisterType.INPUT), size=size
    )
    with start_in_thread([bank]) as server:
        bus = ModbusTcpBus.model_validate(
            {"name": "lan", "type": "modbus_tcp", "host": "127.0.0.1", "port": server.port}
        )
        device = ModbusDevice.model_validate({"name": "m", "bus": "lan", "template": name})
        async with open_modbus_tcp_bus(bus, [device], SystemClock()) as lan:
            reading = await lan.devices[0].read()
    got = [p.value for p in reading.values]
    assert got == pytest.approx(meant, rel=1e-12)
    assert [p.name for p in reading.values] == [p.name for p in template.points]


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
