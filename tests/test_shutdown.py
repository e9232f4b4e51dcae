"""SIGTERM at any moment stops the gateway within its configured bound, exit code 0, with every
reading it made either stored in SQLite or delivered: the moment the handler exists, while
running, mid-poll of a meter that never answers, during a broker outage, while connecting to a
broker that never answers or that drops connection attempts, and under CPU load near a poll slot.

The gateway measures its own bound: past it, it ends itself with exit code 70. So an exit code of
0 is the proof that it stopped in time; the test only waits (generously) for the process to end.
`make test` runs each moment once; `make trials` runs 120 random ones.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import RunningServer, Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker
from fieldgate_sim.processes import terminate

from tests.harness import GatewayProcess, gateway_yaml, nothing_lost, start_gateway
from tests.wire import CheckedFleet

#: The gateway's own stop bound in these trials (``gateway.stop_timeout``).
STOP_BOUND = 3.0
#: How long the test waits for the process to end: liveness only, far beyond the bound.
PROCESS_END_WAIT = STOP_BOUND + 30.0


class MuteBroker:
    """A TCP listener that accepts connections and never says a word: the broker's host is up
    but the broker hangs (or a firewall passes TCP and eats MQTT)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._server.accept()
                self._held.append(connection)

    def close(self) -> None:
        self._server.close()
        for connection in self._held:
            connection.close()
        self._thread.join(timeout=5)


class SynDroppingBroker:
    """A listener whose accept queue is full, so the kernel drops further connection attempts
    silently: a connect hangs, as to a broker behind a firewall that drops SYNs."""

    def __init__(self) -> None:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(0)
        self.port: int = self._server.getsockname()[1]
        self._fillers: list[socket.socket] = []
        # Fill the queue; the attempt that no longer completes shows that it is full.
        for _ in range(8):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(0.5)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                filler.close()
                break
            self._fillers.append(filler)
        else:
            raise RuntimeError("the accept queue never filled up")

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._server.close()


@dataclass
class Upstream:
    """Where the gateway forwards to in a trial; the fleet's view of it if it is a broker."""

    port: int
    fleet: FleetSubscriber | None = None


def meter_buses(meters: RunningServer, timeout: str) -> str:
    return (
        f"- name: lan\n  type: modbus_tcp\n  host: 127.0.0.1\n  port: {meters.port}\n"
        f"  timeout: {timeout}\n"
    )


def meter_devices(count: int, interval: str) -> str:
    return "".join(
        f"- name: m{unit}\n  bus: lan\n  unit_id: {unit}\n  interval: {interval}\n"
        "  points:\n"
        "    - {name: voltage_l1, register: input, address: 0, type: f32, unit: V}\n"
        "    - {name: frequency, register: input, address: 0x46, type: f32, unit: Hz}\n"
        for unit in range(1, count + 1)
    )


def stop_in_bound(gateway: GatewayProcess) -> None:
    assert gateway.process is not None
    code = terminate(gateway.process, PROCESS_END_WAIT)
    log = gateway.this_run_log()
    assert code == 0, f"exit code {code}\n{log}"
    assert "Traceback" not in log, log


@contextlib.contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


def wait_until_near_a_slot(interval: float, rng: random.Random) -> None:
    """Sleep until a few milliseconds around the next wall-clock poll slot."""
    now = time.time()
    slot = math.ceil(now / interval) * interval
    time.sleep(max(0.0, slot - now + rng.uniform(-0.004, 0.004)))


Moment = Callable[[GatewayProcess, random.Random], None]


def as_soon_as_it_can_catch_it(gateway: GatewayProcess, _rng: random.Random) -> None:
    deadline = time.monotonic() + 30
    while not gateway.catches_sigterm():
        assert time.monotonic() < deadline, "the gateway never installed its SIGTERM handler"
        time.sleep(0.0005)


def while_running(gateway: GatewayProcess, rng: random.Random) -> None:
    assert gateway.wait_for_log("fieldgate running", timeout=30), gateway.this_run_log()
    time.sleep(rng.uniform(0.0, 0.8))


@dataclass
class Trial:
    name: str
    moment: Moment
    upstream: str  # "broker", "outage", "mute", "drops-syns"
    silent_meter: bool = False
    meters: int = 2
    interval: str = "200ms"
    cpu_burners: int = 0
    near_slot: bool = False


TRIALS = [
    Trial("handler-just-installed", as_soon_as_it_can_catch_it, "broker"),
    Trial("running", while_running, "broker"),
    Trial("mid-poll-of-a-silent-meter", while_running, "broker", silent_meter=True),
    Trial("broker-outage", while_running, "outage"),
    Trial("broker-never-answers", while_running, "mute"),
    Trial("broker-drops-connection-attempts", while_running, "drops-syns"),
    Trial(
        "cpu-load-near-a-poll-slot",
        while_running,
        "broker",
        meters=20,
        interval="100ms",
        cpu_burners=2,
        near_slot=True,
    ),
]


@contextlib.contextmanager
def upstream_for(kind: str, broker: MosquittoBroker) -> Iterator[Upstream]:
    if kind in ("broker", "outage"):
        with CheckedFleet(broker.port) as fleet:
            yield Upstream(broker.port, fleet)
    elif kind == "mute":
        mute = MuteBroker()
        try:
            yield Upstream(mute.port)
        finally:
            mute.close()
    elif kind == "drops-syns":
        dropping = SynDroppingBroker()
        try:
            yield Upstream(dropping.port)
        finally:
            dropping.close()
    else:
        raise ValueError(kind)


def run_trial(
    trial: Trial,
    rng: random.Random,
    broker: MosquittoBroker,
    gateways: list[GatewayProcess],
    tmp_path: Path,
) -> None:
    run_dir = tmp_path / f"{trial.name}-{rng.randrange(10**9)}"
    run_dir.mkdir()
    buffer_path = run_dir / "buffer.db"
    meters = [Sdm630Meter(unit) for unit in range(1, trial.meters + 1)]
    with (
        start_in_thread(meters) as served,
        upstream_for(trial.upstream, broker) as upstream,
        cpu_load(trial.cpu_burners),
    ):
        if trial.silent_meter:
            served.set_silent(True, unit_id=1)
        config = gateway_yaml(
            upstream.port,
            buffer_path,
            meter_buses(served, timeout="2s" if trial.silent_meter else "500ms"),
            meter_devices(trial.meters, trial.interval),
            stop_timeout=f"{STOP_BOUND:g}s",
        )
        gateway = start_gateway(gateways, run_dir, config)
        trial.moment(gateway, rng)
        if trial.silent_meter:
            assert gateway.wait_for_log("device m1 failed", timeout=30), gateway.this_run_log()
            time.sleep(rng.uniform(0.0, 2.0))  # lands inside one of its 2 s reads
        if trial.near_slot:
            wait_until_near_a_slot(0.1, rng)
        if trial.upstream == "outage":
            broker.stop()
            try:
                assert gateway.wait_for_log("unavailable", timeout=30), gateway.this_run_log()
                time.sleep(rng.uniform(0.0, 1.5))
                stop_in_bound(gateway)
            finally:
                broker.start()
        else:
            stop_in_bound(gateway)
        nothing_lost(buffer_path, upstream.fleet)


@pytest.mark.parametrize("trial", TRIALS, ids=[t.name for t in TRIALS])
def test_sigterm_stops_within_the_bound(
    trial: Trial, broker: MosquittoBroker, gateways: list[GatewayProcess], tmp_path: Path
):
    run_trial(trial, random.Random(trial.name), broker, gateways, tmp_path)


@pytest.mark.slow
def test_sigterm_at_120_random_moments(
    broker: MosquittoBroker, gateways: list[GatewayProcess], tmp_path: Path
):
    rng = random.Random(20261126)
    for _ in range(120):
        run_trial(rng.choice(TRIALS), rng, broker, gateways, tmp_path)


def test_a_process_that_cannot_stop_is_ended_at_the_bound():
    """The last resort: an event loop blocked for good (a driver calling time.sleep, a hung
    disk) cannot keep the process alive past its bound; it ends with 70 and says why."""
    script = (
        "import os, signal, time\n"
        "from gateway.shutdown import ShutdownRequest\n"
        "shutdown = ShutdownRequest(end_hard=True)\n"
        "shutdown.install()\n"
        "shutdown.set_bound(0.5)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(60)  # blocks everything, as a broken driver would\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 70, result.stderr
    assert "did not stop within 0.5s of the stop signal" in result.stderr
