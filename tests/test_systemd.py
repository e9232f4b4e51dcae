"""The unit file is valid for systemd, runs our real CLI, and the daemon tells systemd when it
is ready (Type=notify) and when it stops."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from fieldgate_sim.modbus_server import Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

from gateway.clock import Clock, SystemClock, epoch_ms
from gateway.config.model import GatewaySection
from gateway.quantities import parse_duration
from gateway.readings import PointValue, Reading
from gateway.service import run_gateway
from gateway.shutdown import ShutdownRequest
from gateway.systemd import WatchdogState, earned_ping, watchdog_period
from tests.harness import REPO, gateway_yaml, settings_from_text
from tests.own_drivers import OwnBus, own_drivers

UNIT = REPO / "systemd" / "fieldgate.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_file_verifies(tmp_path: Path):
    fieldgate = Path(sys.executable).parent / "fieldgate"
    unit = tmp_path / "fieldgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/fieldgate/venv/bin/fieldgate", str(fieldgate)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_runs_the_cli_we_ship():
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    assert settings["ExecStart"][0].split()[1:] == ["run", "-c", "/etc/fieldgate/fieldgate.yaml"]


def test_a_bad_config_cannot_restart_in_a_loop():
    """RestartPreventExitStatus= covers the main process only (systemd issue 11868): a bad config
    must end the main process with 78, and nothing that runs before it may fail with 78 while
    Restart= is on. The start limit stops any other failure that repeats at once."""
    settings = unit_settings()
    assert settings["Restart"] == ["on-failure"]
    assert "78" in settings["RestartPreventExitStatus"][0].split()
    for before in ("ExecStartPre", "ExecCondition"):
        assert before not in settings, f"{before} runs outside RestartPreventExitStatus="
    assert int(settings["StartLimitBurst"][0]) <= 10
    # And `run` itself is what exits 78 on a bad config (tests/test_config.py proves it).


def test_a_missing_password_file_does_not_stop_the_unit_from_starting():
    """LoadCredential= of a missing file fails the start, unless SetCredential= of the same name
    gives a default (systemd.exec: then the missing file is not fatal)."""
    settings = unit_settings()
    loaded = {entry.split(":", 1)[0] for entry in settings["LoadCredential"]}
    defaults = {entry.split(":", 1)[0] for entry in settings.get("SetCredential", [])}
    assert "mqtt-password" in loaded
    assert loaded <= defaults


def test_the_watchdog_is_on_and_the_stop_bound_fits_inside_systemds():
    settings = unit_settings()
    assert settings["WatchdogSec"] == ["60s"]
    assert settings["NotifyAccess"] == ["main"]
    # gateway.stop_timeout defaults to 5 s: systemd's SIGKILL must come later.
    default = GatewaySection(id="x").stop_timeout
    assert parse_duration(settings["TimeoutStopSec"][0]) > default


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_exposure_is_at_most_2(tmp_path: Path):
    unit = tmp_path / "fieldgate.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for fieldgate.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout


def test_daemon_notifies_ready_and_stopping(broker: MosquittoBroker, tmp_path: Path):
    notify_path = tmp_path / "notify.sock"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
        start_in_thread([Sdm630Meter(1)]) as meter,
    ):
        notify.bind(str(notify_path))
        notify.settimeout(20)
        config = tmp_path / "fieldgate.yaml"
        config.write_text(
            gateway_yaml(
                broker.port,
                tmp_path / "b.db",
                f"- name: lan\n  type: modbus_tcp\n  host: 127.0.0.1\n  port: {meter.port}\n",
                "- name: m\n  bus: lan\n  points:\n    - {name: f, address: 0x46, type: f32}\n",
            )
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            env={"NOTIFY_SOCKET": str(notify_path), "PATH": "/usr/bin:/bin"},
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ready = notify.recv(256).decode()
            assert ready.startswith("READY=1\nSTATUS=devices: ")
            process.terminate()
            assert notify.recv(256) == b"STOPPING=1"
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


class Blocker:
    """A polled device whose driver, once told to, blocks the event loop (time.sleep in async
    code: the bug a watchdog exists for), with markers on the notify socket around it."""

    def __init__(self, name: str, clock: Clock, notify_path: Path) -> None:
        self._name, self._clock, self._notify_path = name, clock, notify_path
        self.block = threading.Event()

    @property
    def name(self) -> str:
        return self._name

    async def read(self) -> Reading:
        if self.block.is_set():
            self.block.clear()
            self._mark(b"X-BLOCKING")
            time.sleep(1.5)  # noqa: ASYNC251 - the point of this test
            self._mark(b"X-UNBLOCKED")
        return Reading(self._name, epoch_ms(self._clock), (PointValue("v", 1.0),))

    def _mark(self, text: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(text, str(self._notify_path))


async def test_watchdog_pings_while_healthy_and_not_while_the_loop_is_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    notify_path = tmp_path / "notify.sock"
    received: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        done = threading.Event()

        def listen() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    received.append(notify.recv(1024))

        listener = threading.Thread(target=listen)
        listener.start()
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
        monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a check every 0.2 s
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        blockers: list[Blocker] = []

        def open_bus(_config: Any, devices: Sequence[Any], clock: Clock) -> OwnBus:
            blockers.extend(Blocker(d.name, clock, notify_path) for d in devices)
            return OwnBus(blockers)

        config = settings_from_text(
            "gateway: {id: gw-watchdog, stop_timeout: 5s}\n"
            # Nothing listens on port 9: the uplink is down, which does not stop the pings.
            "mqtt: {host: 127.0.0.1, port: 9, reconnect_max: 1s}\n"
            f"buffer: {{path: {tmp_path / 'b.db'}}}\n"
            "buses: [{name: box, type: host}]\n"
            "devices: [{name: meter, bus: box, interval: 100ms}]\n"
        )
        shutdown = ShutdownRequest()
        run = asyncio.create_task(
            run_gateway(config, shutdown, SystemClock(), drivers=own_drivers(open_bus))
        )

        async def until(condition: Callable[[], bool]) -> None:
            async with asyncio.timeout(60):
                while not condition():
                    assert not run.done()
                    await asyncio.sleep(0.05)

        try:
            await until(lambda: received.count(b"WATCHDOG=1") >= 3)
            blockers[0].block.set()
            await until(lambda: b"X-UNBLOCKED" in received)
            after = received.index(b"X-UNBLOCKED")
            await until(lambda: b"WATCHDOG=1" in received[after:])
        finally:
            shutdown.request()
            async with asyncio.timeout(30):
                await run
            await until(lambda: b"STOPPING=1" in received)
            done.set()
            listener.join(timeout=5)

    blocked = received[received.index(b"X-BLOCKING") : received.index(b"X-UNBLOCKED")]
    assert b"WATCHDOG=1" not in blocked, "a blocked event loop must not ping the watchdog"
    assert received.count(b"WATCHDOG=1") >= 4
    assert received[0].startswith(b"READY=1")
    statuses = [m for m in received if m.startswith(b"STATUS=")]
    assert statuses
    assert b"uplink down" in statuses[-1] or b"uplink connecting" in statuses[-1]


def test_a_ping_is_earned_by_progress_or_a_buffer_that_answers():
    state = WatchdogState(readings_stored=10)
    assert earned_ping(state, readings_stored=11, buffer_answered=False)  # a reading came in
    assert not earned_ping(state, readings_stored=11, buffer_answered=False)  # nothing since
    assert earned_ping(state, readings_stored=11, buffer_answered=True)  # idle, but alive


def test_watchdog_period_is_systemds_and_only_for_this_process():
    assert watchdog_period({"WATCHDOG_USEC": "60000000"}) == 60.0
    assert watchdog_period({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_period({}) is None
    assert watchdog_period({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
