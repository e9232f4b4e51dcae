"""The Modbus driver against hw-sim's faulty slaves over Modbus TCP: every answer checked (function
code, unit, transaction id, length), late answers dropped, a peer's close noticed at once,
garbage counted and logged once without tracebacks, one connection shared by every unit id."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from fieldgate_sim.modbus_server import Faults, RegisterBank, RunningServer, start_in_thread

from drivers.modbus.bus import ASK_REFUSED_AGAIN_AFTER, ModbusBus
from drivers.modbus.config import ModbusDevice, ModbusTcpBus
from drivers.modbus.settings import ModbusDeviceSettings, ModbusTcpBusSettings
from drivers.modbus.tcp import open_modbus_tcp_bus
from gateway.buffer import Buffer
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from gateway.health import HealthRegistry
from gateway.readings import Quality
from gateway.scheduler import DevicePoller
from gateway.sink import Sink
from tests.manual_clock import ManualClock

POINTS = [{"name": "x", "address": 0, "type": "u16"}, {"name": "y", "address": 1, "type": "u16"}]


def bus_config(port: int, **extra: Any) -> ModbusTcpBusSettings:
    config = ModbusTcpBus.model_validate(
        {
            "name": "lan",
            "type": "modbus_tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout": "150ms",
            **extra,
        }
    )
    settings: ModbusTcpBusSettings = settings_of(config)
    return settings


def device(
    name: str, unit: int, points: list[dict[str, Any]] | None = None, **extra: Any
) -> ModbusDeviceSettings:
    config = ModbusDevice.model_validate(
        {"name": name, "bus": "lan", "unit_id": unit, "points": points or POINTS, **extra}
    )
    settings: ModbusDeviceSettings = settings_of(config)
    return settings


@pytest.fixture
def meters() -> Any:
    with start_in_thread(
        [RegisterBank(1, holding=[11, 12]), RegisterBank(2, holding=[21, 22])]
    ) as server:
        yield server


def open_bus(server: RunningServer, *units: int, clock: Any = None, **extra: Any) -> ModbusBus:
    devices = [device(f"m{unit}", unit) for unit in units]
    return open_modbus_tcp_bus(bus_config(server.port, **extra), devices, clock or SystemClock())


def values(reading: Any) -> list[Any]:
    return [p.value for p in reading.values]


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "data_received" not in record.getMessage()


async def test_wrong_function_code_is_never_a_value(meters, caplog):
    meters.set_faults(1, Faults(wrong_function_code=True))
    async with open_bus(meters, 1, 2) as lan:
        for _ in range(3):
            with pytest.raises(DeviceProtocolError, match="function code 17 instead of 3"):
                await lan.devices[0].read()
        assert values(await lan.devices[1].read()) == [21, 22]
        assert lan.slaves[1].malformed == 6  # three polls, each asked twice
        assert lan.link.counters.connects == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    no_tracebacks(caplog)


async def test_transaction_id_zero_is_not_taken_for_the_waiting_request(meters):
    meters.set_faults(1, Faults(zero_transaction_id=True))
    async with open_bus(meters, 1, 2, slave_backoff_max="1s") as lan:
        with pytest.raises(DeviceTimeout):
            await lan.devices[0].read()
        assert lan.link.counters.late_answers == 2  # the answer and the retry's
        assert values(await lan.devices[1].read()) == [21, 22]
        assert lan.link.counters.connects == 1


async def test_late_answer_is_dropped_and_the_connection_kept(meters):
    meters.set_faults(2, Faults(delay_s=0.25))  # answers after the 150 ms timeout
    async with open_bus(meters, 1, 2) as lan:
        with pytest.raises(DeviceTimeout):
            await lan.devices[1].read()
        # Unit 2's late answers come in while unit 1's requests wait: never taken for them.
        for _ in range(5):
            assert values(await lan.devices[0].read()) == [11, 12]
        counters = lan.link.counters
        assert counters.connects == 1
        assert counters.timeouts == 2


async def test_a_closed_connection_fails_the_request_at_once(meters):
    meters.set_faults(1, Faults(disconnect=True))
    async with open_bus(meters, 1, 2, timeout="30s") as lan:
        # With a 30 s timeout, only noticing the close can end this read (pytest's own timeout
        # would fail the test long before).
        with pytest.raises(DeviceUnreachable, match="closed"):
            await lan.devices[0].read()
        assert lan.link.counters.closed_by_peer == 1
        assert lan.link.counters.timeouts == 0
        assert values(await lan.devices[1].read()) == [21, 22]


async def test_garbage_is_counted_and_logged_once_without_tracebacks(meters, caplog):
    meters.set_faults(1, Faults(garbage=True))
    async with open_bus(meters, 1, 2, reconnect_max="1s") as lan:
        for _ in range(4):
            with pytest.raises((DeviceProtocolError, DeviceUnreachable)):
                await lan.devices[0].read()
            lan.link._backoff.succeeded()  # reconnect at once, as after the window
            assert values(await lan.devices[1].read()) == [21, 22]
        assert lan.link.counters.malformed >= 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    no_tracebacks(caplog)


async def test_truncated_answer_is_no_value(meters):
    meters.set_faults(1, Faults(truncate=True))
    async with open_bus(meters, 1, 2) as lan:
        with pytest.raises(DeviceError := (DeviceTimeout, DeviceProtocolError, DeviceUnreachable)):
            await lan.devices[0].read()
        del DeviceError
        assert values(await lan.devices[1].read()) == [21, 22]


async def test_silent_unit_shares_one_connection_with_the_others(meters):
    clock = ManualClock(1000.0)
    async with open_bus(meters, 1, 9, clock=clock) as lan:
        for second in range(30):
            clock.now = 1000.0 + second
            assert values(await lan.devices[0].read()) == [11, 12]
            with pytest.raises(DeviceTimeout):
                await lan.devices[1].read()
        assert lan.link.counters.connects == 1


async def test_busy_is_asked_again_then_reported(meters):
    meters.set_faults(1, Faults(exception_code=6))
    async with open_bus(meters, 1) as lan:
        with pytest.raises(DeviceProtocolError, match=r"exception 6 \(server device busy\)"):
            await lan.devices[0].read()
    assert meters.requests_received(1) == 3


async def test_a_refused_range_is_split_off_and_not_asked_again(meters):
    points = [{"name": f"r{a}", "address": a, "type": "u16"} for a in range(6)]
    meters.set_faults(2, Faults(refuse=[("holding", 2, 3)]))
    async with open_modbus_tcp_bus(
        bus_config(meters.port), [device("m", 2, points)], SystemClock()
    ) as lan:
        (meter,) = lan.devices
        first = await meter.read()
        assert first.quality is Quality.PARTIAL
        assert values(first) == [21, 22, None, None, 0, 0]
        assert "illegal data address" in meter.last_missing["r2"]
        before = meters.requests_received(2)
        second = await meter.read()
        assert values(second) == values(first)
        # r0..r1 and r4..r5: two requests, the refused range not asked again.
        assert meters.requests_received(2) - before == 2


async def test_writes_are_read_back(meters):
    async with open_bus(meters, 1) as lan:
        (meter,) = lan.devices
        await meter.write_registers(0, [101])
        await meter.write_registers(0, [102, 103])
        await meter.write_coil(3, True)
        await meter.write_coils(4, [True, False, True])
        assert values(await meter.read()) == [102, 103]
    assert meters.get_registers(1, "holding", 0, 2) == [102, 103]


async def test_a_refused_gap_is_not_read_across_again(meters):
    # Points at 0 and 4 merged across registers 1..3, which this meter refuses to read.
    points = [
        {"name": "a", "address": 0, "type": "u16"},
        {"name": "b", "address": 4, "type": "u16"},
    ]
    meters.set_faults(1, Faults(refuse=[("holding", 1, 3)]))
    config = device("m", 1, points, max_gap=5)
    async with open_modbus_tcp_bus(bus_config(meters.port), [config], SystemClock()) as lan:
        (meter,) = lan.devices
        assert len(meter.requests) == 1
        assert values(await meter.read()) == [11, 0]
        assert len(meter.requests) == 2
        before = meters.requests_received(1)
        assert values(await meter.read()) == [11, 0]
        assert meters.requests_received(1) - before == 2


async def test_without_max_gap_the_fewest_requests_are_learned(meters):
    # Points at 0, 4 and 5 and no max_gap in the config: read across the unused registers in
    # one request; this meter refuses 1..3, so the gap is learned and not read across again.
    points = [{"name": n, "address": a, "type": "u16"} for n, a in (("a", 0), ("b", 4), ("c", 5))]
    async with open_modbus_tcp_bus(
        bus_config(meters.port), [device("m", 1, points)], SystemClock()
    ) as lan:
        (meter,) = lan.devices
        assert [(r.address, r.count) for r in meter.requests] == [(0, 6)]
        before = meters.requests_received(1)
        assert values(await meter.read()) == [11, 0, 0]
        assert meters.requests_received(1) - before == 1
        meters.set_faults(1, Faults(refuse=[("holding", 1, 3)]))
        assert values(await meter.read()) == [11, 0, 0]
        assert [(r.address, r.count) for r in meter.requests] == [(0, 1), (4, 2)]
        before = meters.requests_received(1)
        assert values(await meter.read()) == [11, 0, 0]
        assert meters.requests_received(1) - before == 2


async def test_refused_points_are_asked_again_after_a_while(meters):
    points = [{"name": f"r{a}", "address": a, "type": "u16"} for a in range(4)]
    meters.set_faults(2, Faults(refuse=[("holding", 2, 3)]))
    clock = ManualClock(1000.0)
    async with open_modbus_tcp_bus(bus_config(meters.port), [device("m", 2, points)], clock) as lan:
        (meter,) = lan.devices
        assert values(await meter.read()) == [21, 22, None, None]
        clock.now += ASK_REFUSED_AGAIN_AFTER - 1
        before = meters.requests_received(2)
        assert values(await meter.read()) == [21, 22, None, None]
        assert meters.requests_received(2) - before == 1  # the refused range still left out
        # The meter was reconfigured: once the window has passed, the range is asked again.
        meters.set_faults(2, None)
        clock.now += 1
        assert values(await meter.read()) == [21, 22, 0, 0]
        assert len(meter.requests) == 1
        assert not meter.refused
        # Refused again: split off again, and kept off for another window.
        meters.set_faults(2, Faults(refuse=[("holding", 2, 3)]))
        clock.now += ASK_REFUSED_AGAIN_AFTER
        assert values(await meter.read()) == [21, 22, None, None]
        assert "r2" in meter.refused


async def test_the_breaker_through_the_poller_spares_the_line_and_the_others(meters, tmp_path):
    # The pollers the service runs, on an injected schedule: one poll a second for a minute,
    # unit 2 silent. Unit 1 keeps every slot; unit 2 costs the line one timeout per backoff
    # window; when it answers again it is polled once per slot, with no catch-up burst.
    meters.set_faults(2, Faults(silent=True))
    clock = ManualClock(10_000.0)
    config = bus_config(meters.port, timeout="50ms", slave_backoff_max="8s")
    buffer = await Buffer.open(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    health = HealthRegistry()
    stop = asyncio.Event()
    async with open_modbus_tcp_bus(config, [device("m1", 1), device("m2", 2)], clock) as lan:
        sink = Sink(buffer, health, clock)
        tasks = [
            asyncio.create_task(DevicePoller(d, 1.0, sink, clock, stop).run()) for d in lan.devices
        ]
        try:
            await clock.settle(sleepers=2)
            await clock.advance_to(10_059.5, sleepers=2)
            dead_requests = meters.requests_received(2)
            skipped = lan.slaves[2].skipped_polls
            meters.set_faults(2, None)
            await clock.advance_to(10_079.5, sleepers=2)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await buffer.close()
        counts = lan.line_counts()
    m1, m2 = health.devices["m1"], health.devices["m2"]
    # Slots at 10 001 .. 10 079: 59 while unit 2 was silent, 20 after.
    assert (m1.polls_ok, m1.polls_failed, m1.cycles_skipped) == (79, 0, 0)
    # Backoff windows of 0.5-1, 1-2, 2-4, then 4-8 s: at most 3 + 56 / 4 probes in 59 s, the
    # first one retried; every other slot failed at once without touching the line.
    attempts = dead_requests - 1
    assert attempts <= 3 + 56 // 4 + 1
    assert skipped == 59 - attempts
    # Back: polled on its next slot after the window, one request a poll, no catch-up burst.
    assert m2.up is True
    assert m2.polls_ok >= 20 - 8
    assert meters.requests_received(2) - dead_requests == m2.polls_ok
    assert counts.slaves[2].breaker == "closed"
    assert counts.slaves[2].timeouts == dead_requests
