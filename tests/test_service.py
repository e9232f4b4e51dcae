"""The service in-process, with drivers of the test's own behind the real seam, a real buffer and
a real broker: a streaming driver's readings take the same way as polled ones, and a driver's
bug costs its device (or its stream) and nothing else."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from fieldgate_sim.mosquitto import MosquittoBroker

from gateway.clock import Clock, SystemClock, epoch_ms
from gateway.config import isolated
from gateway.driver import PolledDevice, ReadingSink
from gateway.health import HealthRegistry
from gateway.readings import PointValue, Reading
from gateway.service import _described, run_gateway
from gateway.settings import GatewaySettings
from gateway.shutdown import ShutdownRequest
from tests.harness import reading_seqs, settings_from_text
from tests.own_drivers import OwnBus, own_drivers
from tests.wire import CheckedFleet


def config(broker_port: int, buffer: Path) -> GatewaySettings:
    return settings_from_text(
        f"""\
gateway: {{id: gw-service, stop_timeout: 5s}}
mqtt: {{host: 127.0.0.1, port: {broker_port}, reconnect_max: 1s}}
buffer: {{path: {buffer}}}
buses:
  - {{name: radio, type: host}}
  - {{name: box, type: host}}
devices:
  - {{name: buggy, bus: box, interval: 100ms}}
  - {{name: steady, bus: box, interval: 100ms}}
"""
    )


class Polled:
    """A polled device; ``buggy`` raises something that is not a DeviceError on every poll."""

    def __init__(self, name: str, clock: Clock, buggy: bool) -> None:
        self._name, self._clock, self._buggy = name, clock, buggy

    @property
    def name(self) -> str:
        return self._name

    async def read(self) -> Reading:
        if self._buggy:
            raise KeyError("a bug in the driver")
        return Reading(self._name, epoch_ms(self._clock), (PointValue("v", 1.5, "V"),))


class StreamingOwnBus(OwnBus):
    """The ``radio`` bus: it also streams, five readings a run, and its first run ends in a bug."""

    def __init__(self, devices: Sequence[PolledDevice], clock: Clock) -> None:
        super().__init__(devices)
        self._clock = clock
        self.runs = 0

    async def stream(self, sink: ReadingSink) -> None:
        self.runs += 1
        for count in range(5):
            reading = Reading("pushed", epoch_ms(self._clock), (PointValue("n", count),))
            await sink.submit(reading)
        if self.runs == 1:
            raise ZeroDivisionError("a bug in the stream")
        await asyncio.Event().wait()  # an advert-driven stream idles until cancelled


def open_bus(buses: dict[str, OwnBus], config: Any, devices: Sequence[Any], clock: Clock) -> OwnBus:
    polled = [Polled(d.name, clock, buggy=d.name == "buggy") for d in devices]
    bus = StreamingOwnBus(polled, clock) if config.name == "radio" else OwnBus(polled)
    buses[config.name] = bus
    return bus


async def test_streams_and_polls_share_the_sink_and_a_bug_costs_only_its_part(
    broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    health = HealthRegistry()
    shutdown = ShutdownRequest()
    buses: dict[str, OwnBus] = {}
    with CheckedFleet(broker.port) as fleet:
        run = asyncio.create_task(
            run_gateway(
                config(broker.port, tmp_path / "b.db"),
                shutdown,
                SystemClock(),
                health,
                drivers=own_drivers(partial(open_bus, buses)),
            )
        )

        def arrived(device: str) -> list[dict[str, Any]]:
            return [r for r in fleet.readings() if r["device"] == device]

        try:
            async with asyncio.timeout(60):
                while len(arrived("pushed")) < 10 or len(arrived("steady")) < 5:
                    assert not run.done(), "the gateway ended"
                    await asyncio.sleep(0.05)
        finally:
            shutdown.request()
            async with asyncio.timeout(30):
                await run  # returns normally: nothing escaped

        readings = fleet.readings()
    # The stream ran again after its bug; both runs' readings arrived, in order, none twice.
    radio = buses["radio"]
    assert isinstance(radio, StreamingOwnBus)
    assert radio.runs == 2
    pushed = [fleet.values(r)["n"] for r in arrived("pushed")]
    assert pushed[:10] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    seqs = reading_seqs(readings)
    assert seqs == sorted(seqs)
    # The buggy device failed on every slot, counted; it never cost the steady one a poll.
    assert health.devices["buggy"].driver_faults >= 2
    assert health.devices["buggy"].polls_ok == 0
    assert health.devices["steady"].polls_failed == 0
    assert health.progress.readings_stored >= len(set(seqs))
    # Each bug logged once, with its traceback.
    stream_bug = [r for r in caplog.records if "stream of bus radio failed" in r.getMessage()]
    device_bug = [r for r in caplog.records if "buggy: the driver failed" in r.getMessage()]
    assert len(stream_bug) == 1
    assert stream_bug[0].exc_info is not None
    assert len(device_bug) == 1
    assert device_bug[0].exc_info is not None


class FailsToOpen(OwnBus):
    """A bus whose driver raises while opening (a bug: the contract says opening must not fail
    because a device is down) on its first ``failures`` attempts."""

    attempts = 0

    def __init__(self, devices: Sequence[PolledDevice], failures: int) -> None:
        super().__init__(devices)
        self._failures = failures

    async def __aenter__(self) -> FailsToOpen:
        FailsToOpen.attempts += 1
        if FailsToOpen.attempts <= self._failures:
            raise OSError(f"a bug while opening, attempt {FailsToOpen.attempts}")
        return self


async def test_a_bus_that_fails_to_open_costs_its_devices_only_and_is_opened_on_a_retry(
    broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    health = HealthRegistry()
    shutdown = ShutdownRequest()
    FailsToOpen.attempts = 0

    def make_bus(config: Any, devices: Sequence[Any], clock: Clock) -> OwnBus:
        polled = [Polled(d.name, clock, buggy=False) for d in devices]
        return FailsToOpen(polled, failures=2) if config.name == "radio" else OwnBus(polled)

    gateway_config = settings_from_text(
        f"""\
gateway: {{id: gw-service, stop_timeout: 5s}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_max: 1s}}
buffer: {{path: {tmp_path / "b.db"}}}
buses:
  - {{name: radio, type: host}}
  - {{name: box, type: host}}
devices:
  - {{name: late, bus: radio, interval: 100ms}}
  - {{name: steady, bus: box, interval: 100ms}}
"""
    )
    with CheckedFleet(broker.port) as fleet:
        run = asyncio.create_task(
            run_gateway(
                gateway_config, shutdown, SystemClock(), health, drivers=own_drivers(make_bus)
            )
        )

        def arrived(device: str) -> list[dict[str, Any]]:
            return [r for r in fleet.readings() if r["device"] == device]

        try:
            async with asyncio.timeout(60):
                # The other bus polls from the start, while this one is still failing.
                while not arrived("steady"):
                    assert not run.done(), "the gateway ended"
                    await asyncio.sleep(0.05)
                assert health.devices["late"].up is False
                assert "could not be opened" in (health.devices["late"].last_error or "")
                while len(arrived("late")) < 3:
                    assert not run.done(), "the gateway ended"
                    await asyncio.sleep(0.05)
        finally:
            shutdown.request()
            async with asyncio.timeout(30):
                await run

    # Opened on the third attempt; its device recovered; the failure logged once, with the
    # traceback, and the later failed attempt only at debug.
    assert FailsToOpen.attempts == 3
    assert health.devices["late"].up is True
    opening = [
        r for r in caplog.records if "bus radio (host) could not be opened" in r.getMessage()
    ]
    assert len(opening) == 1
    assert opening[0].exc_info is not None
    assert any("bus radio opened on a retry" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "radio failed unexpectedly" in r.getMessage()]
    assert health.devices["steady"].polls_failed == 0


def test_meters_of_one_kind_share_their_described_points():
    devices = "".join(
        f"  - {{name: m{n}, bus: lan, unit_id: {n + 1}, template: eastron-sdm630}}\n"
        for n in range(3)
    )
    config = settings_from_text(
        "gateway: {id: g}\nmqtt: {host: broker}\n"
        "buses: [{name: lan, type: modbus_tcp, host: 10.0.0.5}]\n"
        f"devices:\n{devices}"
    )
    described = _described(config.devices)
    assert list(described) == [device.info() for device in config.devices]
    assert len({id(info.points) for info in described}) == 1
    assert len(described[0].points) == 32  # the template's points


async def test_a_stop_during_a_reload_ends_the_config_reader_instead_of_waiting_for_it(
    broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    text = (
        "gateway: {id: gw-service, stop_timeout: 5s}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_max: 1s}}\n"
        f"buffer: {{path: {tmp_path / 'b.db'}}}\n"
        "buses: [{name: box, type: host}]\n"
        "devices: [{name: steady, bus: box, interval: 100ms}]\n"
    )
    path = tmp_path / "fieldgate.yaml"
    path.write_text(text)
    # A config reader that never answers (as one stuck on a loaded box would not, for a while).
    pid_file = tmp_path / "reader.pid"
    stuck = tmp_path / "stuck-reader"
    stuck.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    stuck.chmod(0o755)
    monkeypatch.setattr(isolated, "CHILD_TIMEOUT", 3600.0)

    def open_bus(_config: Any, devices: Sequence[Any], clock: Clock) -> OwnBus:
        return OwnBus([Polled(d.name, clock, buggy=False) for d in devices])

    shutdown = ShutdownRequest()
    with CheckedFleet(broker.port) as fleet:
        run = asyncio.create_task(
            run_gateway(
                settings_from_text(text),
                shutdown,
                SystemClock(),
                drivers=own_drivers(open_bus),
                config_path=path,
            )
        )
        async with asyncio.timeout(60):
            while not fleet.readings():
                assert not run.done(), "the gateway ended"
                await asyncio.sleep(0.05)
            monkeypatch.setattr(sys, "executable", str(stuck))
            shutdown.reload.set()  # what SIGHUP does
            while not pid_file.exists() or not pid_file.read_text().strip():
                assert not run.done(), "the gateway ended"
                await asyncio.sleep(0.05)
        reader = int(pid_file.read_text())
        shutdown.request()
        async with asyncio.timeout(30):  # the reader would hold a stop for 10 minutes
            await run
    with pytest.raises(ProcessLookupError):
        os.kill(reader, 0)  # ended and reaped, not left behind
