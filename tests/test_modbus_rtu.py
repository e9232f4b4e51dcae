"""Modbus RTU against hw-sim: on a pseudo-terminal line whose relay holds every byte for its time
on the wire at 9600 baud, and RTU-over-TCP. Three meters on one line with one dead: the others
are read on every slot and the dead one costs at most one timeout per backoff window (counted
over an injected clock, not timed)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from fieldgate_sim.modbus_server import Faults, RegisterBank, start_in_thread
from fieldgate_sim.serial_line import start_serial_line_in_thread

from drivers.modbus.config import ModbusDevice, ModbusRtuBus, ModbusRtuOverTcpBus
from drivers.modbus.rtu import open_modbus_rtu_bus
from drivers.modbus.settings import (
    ModbusDeviceSettings,
    ModbusRtuBusSettings,
    ModbusRtuOverTcpBusSettings,
)
from drivers.modbus.tcp import open_modbus_rtu_over_tcp_bus
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.errors import DeviceError, DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from tests.manual_clock import ManualClock


def f32(value: float) -> list[int]:
    return list(struct.unpack(">2H", struct.pack(">f", value)))


def meter(unit: int) -> RegisterBank:
    return RegisterBank(
        unit,
        holding=[unit * 10, unit * 10 + 1],
        input=f32(230.0 + unit),
        coils=[False, True, unit % 2 == 1],
    )


def device(name: str, unit: int) -> ModbusDeviceSettings:
    config = ModbusDevice.model_validate(
        {
            "name": name,
            "bus": "rs485",
            "unit_id": unit,
            "points": [
                {"name": "v", "register": "input", "address": 0, "type": "f32", "unit": "V"},
                {"name": "a", "address": 0, "type": "u16"},
                {"name": "b", "address": 1, "type": "u16"},
                {"name": "run", "register": "coil", "address": 2, "type": "bool"},
            ],
        }
    )
    settings: ModbusDeviceSettings = settings_of(config)
    return settings


def expected(unit: int) -> list[Any]:
    return [230.0 + unit, unit * 10, unit * 10 + 1, unit % 2]


def rtu_config(path: str, **extra: Any) -> ModbusRtuBusSettings:
    config = ModbusRtuBus.model_validate(
        {"name": "rs485", "type": "modbus_rtu", "port": path, "timeout": "100ms", **extra}
    )
    settings: ModbusRtuBusSettings = settings_of(config)
    return settings


def rtu_over_tcp_config(port: int, **extra: Any) -> ModbusRtuOverTcpBusSettings:
    config = ModbusRtuOverTcpBus.model_validate(
        {"name": "rs485", "type": "modbus_rtu_over_tcp", "host": "127.0.0.1", "port": port, **extra}
    )
    settings: ModbusRtuOverTcpBusSettings = settings_of(config)
    return settings


@pytest.fixture
def line() -> Any:
    with start_serial_line_in_thread([meter(1), meter(2), meter(3)], baudrate=9600) as running:
        yield running


async def test_three_meters_on_one_line_one_dead_others_keep_every_slot(line):
    line.set_faults(2, Faults(silent=True))
    clock = ManualClock(10_000.0)
    devices = [device("m1", 1), device("m2", 2), device("m3", 3)]
    config = rtu_config(line.path, slave_backoff_max="8s")
    slots = 60  # one poll a second for a minute of injected time
    good = {"m1": 0, "m3": 0}
    dead_attempts = 0
    async with open_modbus_rtu_bus(config, devices, clock) as rs485:
        m1, m2, m3 = rs485.devices
        for slot in range(slots):
            clock.now = 10_000.0 + slot
            for healthy, unit in ((m1, 1), (m3, 3)):
                reading = await healthy.read()
                assert [p.value for p in reading.values] == expected(unit)
                good[healthy.name] += 1
            before = line.requests_received(2)
            with pytest.raises(DeviceTimeout):
                await m2.read()
            dead_attempts += line.requests_received(2) > before
        counters = rs485.link.counters
        state = rs485.slaves[2]
    assert good == {"m1": slots, "m3": slots}
    # Backoff windows of 0.5-1, 1-2, 2-4, then 4-8 s (equal jitter, capped at 8 s): over 60 s
    # at most 3 + 57 / 4 probes; the first attempt alone is retried.
    assert dead_attempts <= 3 + 57 // 4 + 1
    assert line.requests_received(2) == dead_attempts + 1
    assert state.skipped_polls == slots - dead_attempts
    assert counters.connects == 1
    # Three requests a poll (input, holding and coil tables) for each of the two healthy ones.
    assert counters.answers == 2 * slots * 3


async def test_a_meter_that_comes_back_is_polled_once_on_its_next_slot(line):
    line.set_faults(2, Faults(silent=True))
    clock = ManualClock(20_000.0)
    config = rtu_config(line.path, slave_backoff_max="4s")
    async with open_modbus_rtu_bus(config, [device("m2", 2)], clock) as rs485:
        (m2,) = rs485.devices
        for slot in range(20):
            clock.now = 20_000.0 + slot
            with pytest.raises(DeviceTimeout):
                await m2.read()
        line.set_faults(2, None)
        recovered_at = None
        for slot in range(20, 40):
            clock.now = 20_000.0 + slot
            before = line.requests_received(2)
            try:
                reading = await m2.read()
            except DeviceTimeout:
                assert line.requests_received(2) == before  # still backed off: no wire traffic
                continue
            assert [p.value for p in reading.values] == expected(2)
            # One poll's requests (three tables), never a catch-up burst.
            assert line.requests_received(2) - before == 3
            recovered_at = recovered_at or slot
        assert recovered_at is not None
        assert recovered_at <= 20 + 4


async def test_late_answer_on_the_line_is_never_taken_for_the_next(line):
    line.set_faults(2, Faults(delay_s=0.3))
    async with open_modbus_rtu_bus(
        rtu_config(line.path), [device("m1", 1), device("m2", 2)], SystemClock()
    ) as rs485:
        m1, m2 = rs485.devices
        with pytest.raises(DeviceTimeout):
            await m2.read()
        for _ in range(4):
            assert [p.value for p in (await m1.read()).values] == expected(1)
        assert rs485.link.counters.late_answers >= 1


async def test_rtu_over_tcp_reads_and_rejects_wrong_function_codes():
    with start_in_thread([meter(1), meter(2)], framing="rtu") as server:
        config = rtu_over_tcp_config(server.port, timeout="100ms")
        server.set_faults(2, Faults(wrong_function_code=True))
        async with open_modbus_rtu_over_tcp_bus(
            config, [device("m1", 1), device("m2", 2)], SystemClock()
        ) as bus:
            m1, m2 = bus.devices
            assert [p.value for p in (await m1.read()).values] == expected(1)
            with pytest.raises(DeviceProtocolError, match="function code"):
                await m2.read()
            server.set_faults(2, Faults(truncate=True))
            with pytest.raises(DeviceError):
                await m2.read()
            assert [p.value for p in (await m1.read()).values] == expected(1)


async def test_crc_errors_at_one_percent_lose_under_one_percent_of_polls():
    with start_in_thread([meter(1)], framing="rtu") as server:
        server.set_faults(1, Faults(corrupt_rate=0.01, seed=7))
        config = rtu_over_tcp_config(server.port, timeout="200ms", turnaround="1ms")
        polls, delivered = 400, 0
        async with open_modbus_rtu_over_tcp_bus(config, [device("m1", 1)], SystemClock()) as bus:
            (m1,) = bus.devices
            for _ in range(polls):
                reading = await m1.read()
                delivered += reading.quality == "good"
                assert [p.value for p in reading.values if p.value is not None] == [
                    v
                    for v, p in zip(expected(1), reading.values, strict=True)
                    if p.value is not None
                ]
            crc_errors = bus.link.counters.crc_errors
    assert crc_errors > 0
    assert delivered >= 0.99 * polls


async def test_a_serial_port_has_exactly_one_owner(line):
    first = open_modbus_rtu_bus(rtu_config(line.path), [device("m1", 1)], SystemClock())
    second = open_modbus_rtu_bus(rtu_config(line.path), [device("m3", 3)], SystemClock())
    async with first, second:
        assert [p.value for p in (await first.devices[0].read()).values] == expected(1)
        with pytest.raises(DeviceUnreachable, match="cannot connect"):
            await second.devices[0].read()
