"""The Modbus TCP driver against the simulated meter, in-process: partial readings when the meter
refuses a block, NaN as null, errors as DeviceError, reconnection after the meter comes back."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from fieldgate_sim.modbus_server import RegisterBank, start_in_thread

from drivers.modbus.config import ModbusDevice, ModbusTcpBus
from drivers.modbus.settings import ModbusDeviceSettings, ModbusTcpBusSettings
from drivers.modbus.tcp import open_modbus_tcp_bus
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from gateway.readings import Quality


def f32(value: float) -> list[int]:
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def bus(port: int, **extra: Any) -> ModbusTcpBusSettings:
    config = ModbusTcpBus.model_validate(
        {"name": "lan", "type": "modbus_tcp", "host": "127.0.0.1", "port": port, **extra}
    )
    settings: ModbusTcpBusSettings = settings_of(config)
    return settings


def device(points: list[dict[str, Any]], unit_id: int = 1) -> ModbusDeviceSettings:
    config = ModbusDevice.model_validate(
        {"name": "m", "bus": "lan", "unit_id": unit_id, "points": points}
    )
    settings: ModbusDeviceSettings = settings_of(config)
    return settings


async def test_refused_block_gives_a_partial_reading():
    holding = f32(230.5) + f32(float("nan"))
    with start_in_thread([RegisterBank(1, holding=holding, size=16)]) as meter:
        points = [
            {"name": "v", "address": 0, "type": "f32", "unit": "V"},
            {"name": "broken", "address": 2, "type": "f32"},
            {"name": "beyond", "address": 100, "type": "u16"},  # the meter has 16 registers
        ]
        async with open_modbus_tcp_bus(bus(meter.port), [device(points)], SystemClock()) as lan:
            reading = await lan.devices[0].read()
    assert reading.quality is Quality.PARTIAL
    assert [(p.name, p.value, p.unit) for p in reading.values] == [
        ("v", 230.5, "V"),
        ("broken", None, None),
        ("beyond", None, None),
    ]


async def test_every_block_refused_is_a_protocol_error():
    with start_in_thread([RegisterBank(1, size=16)]) as meter:
        points = [{"name": "x", "address": 200, "type": "u16"}]
        async with open_modbus_tcp_bus(bus(meter.port), [device(points)], SystemClock()) as lan:
            with pytest.raises(DeviceProtocolError, match=r"exception 2 \(illegal data address\)"):
                await lan.devices[0].read()


async def test_absent_unit_times_out():
    with start_in_thread([RegisterBank(1, size=16)]) as meter:
        points = [{"name": "x", "address": 0, "type": "u16"}]
        config = bus(meter.port, timeout="200ms")
        async with open_modbus_tcp_bus(config, [device(points, unit_id=9)], SystemClock()) as lan:
            with pytest.raises(DeviceTimeout, match="unit 9"):
                await lan.devices[0].read()


class SteppedClock(SystemClock):
    """Real wall time for the readings' stamps; monotonic time (what the reconnect backoff
    waits on) moves only when the test steps it, so no test waits for a backoff to pass."""

    def __init__(self) -> None:
        self.stepped = 0.0

    def monotonic(self) -> float:
        return self.stepped

    def synchronised(self) -> bool:
        return True


async def test_reconnects_after_the_meter_comes_back():
    points = [{"name": "x", "address": 0, "type": "u16"}]
    meter = start_in_thread([RegisterBank(1, holding=[42], size=16)])
    port = meter.port
    clock = SteppedClock()
    config = bus(port, timeout="200ms", reconnect_max="500ms")
    async with open_modbus_tcp_bus(config, [device(points)], clock) as lan:
        assert (await lan.devices[0].read()).values[0].value == 42
        meter.stop()
        with pytest.raises((DeviceUnreachable, DeviceTimeout)):
            await lan.devices[0].read()
        # While the meter is away, attempts inside the backoff window do not even connect.
        with pytest.raises(DeviceUnreachable, match=r"cannot connect|not connected"):
            await lan.devices[0].read()
        with pytest.raises(DeviceUnreachable, match="next attempt in"):
            await lan.devices[0].read()
        with start_in_thread([RegisterBank(1, holding=[43], size=16)], port=port):
            clock.stepped += 1.0  # past the longest backoff (reconnect_max)
            reading = await lan.devices[0].read()
    assert reading.values[0].value == 43
