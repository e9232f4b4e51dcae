"""End-to-end baseline: points per second through the whole data path on one core.

poll (Modbus TCP) -> SQLite commit -> MQTT publish -> PUBACK -> row deleted, with 50 simulated
SDM630 meters (20 f32 points each, one request per poll) and a real Mosquitto, all on loopback.
The gateway runs as a child process pinned to one core; the simulators, the broker and the fleet
subscriber (this process) share another core when the machine has two or more.

Prints figures and ratios only: no assertions, no pass/fail.

    .venv/bin/python bench/end_to_end.py            # 200ms pass, then a 50ms saturation pass
    .venv/bin/python bench/end_to_end.py --quick    # one 5 s pass, for smoke-testing
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fieldgate_sim.fleet import FleetSubscriber, Received
from fieldgate_sim.modbus_server import run_many_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker, mosquitto_available
from fieldgate_sim.sdm630 import INPUT_REGISTERS

from gateway.quantities import parse_duration

REPO = Path(__file__).resolve().parent.parent
METERS = 50
GATEWAY_ID = "bench"
TOPIC_PREFIX = "fieldgate"
#: Voltages, currents, active/apparent/reactive powers and power factors of the three phases:
#: 0x00..0x26 step 2, contiguous, so each poll is a single read of 40 input registers.
POINT_ADDRESSES = range(0x00, 0x28, 2)
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- configuration -------------------------------------------------------------------------


def sdm630_points() -> list[dict[str, Any]]:
    by_address = {register.address: register for register in INPUT_REGISTERS}
    points: list[dict[str, Any]] = []
    for address in POINT_ADDRESSES:
        register = by_address.get(address)
        # 0x24 and 0x26 are not in the published map; the meter answers them (as 0.0).
        point: dict[str, Any] = {
            "name": register.name if register else f"reserved_{address:#06x}",
            "register": "input",
            "address": address,
            "type": "f32",
        }
        if register and register.unit:
            point["unit"] = register.unit
        points.append(point)
    return points


def gateway_config(broker_port: int, meter_ports: Sequence[int], interval_ms: float, buffer: Path):
    """The whole config, as JSON (which the YAML loader reads as YAML)."""
    points = sdm630_points()
    return json.dumps(
        {
            "gateway": {"id": GATEWAY_ID},
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker_port,
                "topic_prefix": TOPIC_PREFIX,
                "keepalive": "30s",
                "reconnect_max": "1s",
            },
            "buffer": {"path": str(buffer)},
            "buses": [
                {
                    "name": f"bus{n:02d}",
                    "type": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "timeout": "1s",
                }
                for n, port in enumerate(meter_ports)
            ],
            "devices": [
                {
                    "name": f"meter{n:02d}",
                    "bus": f"bus{n:02d}",
                    "unit_id": 1,
                    "interval": f"{interval_ms:g}ms",
                    "max_gap": 0,
                    "points": points,
                }
                for n in range(len(meter_ports))
            ],
        },
        indent=2,
    )


# --- /proc and SQLite probes ---------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def status_kib(pid: int, key: str) -> int:
    value = status_field(pid, key)
    return int(value.split()[0]) if value != "?" else 0


def thread_cpus(pid: int) -> str:
    """The CPUs each thread of ``pid`` may run on, e.g. ``0`` when all are pinned to core 0."""
    allowed: set[str] = set()
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                allowed.add(status_field(int(task.name), "Cpus_allowed_list"))
    return ",".join(sorted(allowed)) or "?"


def buffer_state(path: Path) -> tuple[int, int]:
    """(rows waiting in ``readings``, newest sequence number ever given), read-only."""
    if not path.exists():
        return 0, 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        waiting: int = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        return waiting, int(row[0]) if row else 0


# --- the gateway child process ---------------------------------------------------------------


_SELF_PINNING = (
    "import os, runpy, sys; os.sched_setaffinity(0, {{{cpu}}}); "
    "sys.argv = ['gateway', *sys.argv[2:]]; runpy.run_module('gateway', run_name='__main__')"
)


class Gateway:
    """``python -m gateway run`` pinned to ``cpu``, logging to a file."""

    def __init__(self, config_path: Path, log_path: Path, cpu: int) -> None:
        self.log_path = log_path
        gateway_args = ["-m", "gateway", "run", "-c", str(config_path)]
        taskset = shutil.which("taskset")
        if taskset:
            command = [taskset, "-c", str(cpu), sys.executable, *gateway_args]
        else:
            # No util-linux: the child pins itself before it imports anything or starts a
            # thread (preexec_fn is unsafe here: this process already runs threads).
            command = [sys.executable, "-c", _SELF_PINNING.format(cpu=cpu), *gateway_args[1:]]
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_running(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "fieldgate running" in self.log():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(
            f"the gateway did not start (exit code {self.process.poll()}):\n{self.log()[-2000:]}"
        )

    def stop(self) -> str:
        """SIGTERM, wait up to 10 s, then SIGKILL; says how it ended."""
        if self.process.poll() is not None:
            return f"had already exited with {self.process.returncode}"
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
            return f"did not exit within {STOP_TIMEOUT_S:g}s of SIGTERM: killed"
        return f"exited with {code}"


# --- the fleet side ---------------------------------------------------------------------------


class ArrivalRecorder:
    """Wall-clock arrival time of every reading message; parsed only after the window, so the
    subscriber's thread does as little as possible while the gateway is measured."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrivals: list[tuple[float, bytes]] = []

    def on_message(self, message: Received) -> None:
        arrived = time.time()
        with self._lock:
            self._arrivals.append((arrived, message.payload))

    def take(self) -> list[tuple[float, bytes]]:
        with self._lock:
            taken, self._arrivals = self._arrivals, []
        return taken


# --- one pass ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PassResult:
    interval_ms: float
    seconds: float
    points_per_poll: int
    demanded_pts: float
    delivered_pts: float
    delivered_polls: float
    stored_polls: float
    partial: int
    gateway_cpu: float
    bench_cpu: float
    broker_cpu: float | None
    peak_rss_mib: float
    rss_mib: float
    backlog_start: int
    backlog_end: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    stopped: str
    log_problems: list[str]

    @property
    def ratio(self) -> float:
        return self.delivered_pts / self.demanded_pts

    def summary(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        return (
            f"interval {self.interval_ms:g}ms: demanded {self.demanded_pts:.0f} pts/s, "
            f"delivered {self.delivered_pts:.0f} pts/s ({self.ratio:.3f}), "
            f"polls {self.delivered_polls:.1f}/s, gateway CPU {self.gateway_cpu:.0f}% of one core, "
            f"peak RSS {self.peak_rss_mib:.1f} MiB, latency p50 {ms(self.latency_p50_ms)} ms "
            f"p99 {ms(self.latency_p99_ms)} ms, backlog {self.backlog_end} rows"
        )

    def details(self) -> str:
        demanded_polls = self.demanded_pts / self.points_per_poll
        broker = "?" if self.broker_cpu is None else f"{self.broker_cpu:.0f}%"
        return (
            f"  polls stored {self.stored_polls:.1f}/s of {demanded_polls:.0f}/s demanded "
            f"({self.stored_polls / demanded_polls:.3f}); backlog {self.backlog_start} -> "
            f"{self.backlog_end} rows over the window; latency max {self.latency_max_ms or 0:.0f}"
            f" ms; partial readings {self.partial}; RSS at end {self.rss_mib:.1f} MiB\n"
            f"  other side: bench process (50 sims + subscriber) CPU {self.bench_cpu:.0f}%, "
            f"mosquitto CPU {broker} (of one core); gateway {self.stopped}; "
            f"log warnings/errors: {len(self.log_problems)}"
        )


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def count_window(
    arrivals: list[tuple[float, bytes]], start: float, end: float
) -> tuple[int, int, int, list[float]]:
    """(readings, points, partial readings, latencies in ms) of the readings whose first arrival
    (by seq) fell within [start, end)."""
    seen: set[int] = set()
    readings = points = partial = 0
    latencies: list[float] = []
    for arrived, payload in arrivals:
        message = json.loads(payload)
        seq = int(message["seq"])
        if seq in seen:
            continue
        seen.add(seq)
        if not start <= arrived < end:
            continue
        readings += 1
        points += len(message["values"])  # one per point of the description
        partial += message.get("quality") != "good"
        read_at = datetime.fromisoformat(message["ts"]).timestamp()
        latencies.append((arrived - read_at) * 1000)
    latencies.sort()
    return readings, points, partial, latencies


def run_pass(
    *,
    interval_ms: float,
    seconds: float,
    warmup: float,
    broker: MosquittoBroker,
    meter_ports: Sequence[int],
    recorder: ArrivalRecorder,
    gateway_cpu: int,
) -> PassResult:
    workdir = Path(tempfile.mkdtemp(prefix="fieldgate-bench-"))
    try:
        buffer_path = workdir / "buffer.db"
        config_path = workdir / "fieldgate.yaml"
        config_path.write_text(gateway_config(broker.port, meter_ports, interval_ms, buffer_path))
        recorder.take()  # anything left from an earlier pass
        gateway = Gateway(config_path, workdir / "gateway.log", gateway_cpu)
        try:
            gateway.wait_running(STARTUP_TIMEOUT_S)
            print(
                f"  gateway pid {gateway.pid} running, threads allowed on CPU(s) "
                f"{thread_cpus(gateway.pid)}; warm-up {warmup:g} s, then {seconds:g} s measured",
                flush=True,
            )
            time.sleep(warmup)
            broker_pid = _broker_pid(broker)

            start = time.time()
            gateway_cpu0 = cpu_seconds(gateway.pid)
            bench_cpu0 = time.process_time()
            broker_cpu0 = cpu_seconds(broker_pid) if broker_pid else 0.0
            backlog_start, seq_start = buffer_state(buffer_path)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and gateway.process.poll() is None:
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
            end = time.time()
            if gateway.process.poll() is not None:
                raise RuntimeError(f"the gateway exited mid-window:\n{gateway.log()[-2000:]}")
            gateway_used = cpu_seconds(gateway.pid) - gateway_cpu0
            bench_used = time.process_time() - bench_cpu0
            broker_used = cpu_seconds(broker_pid) - broker_cpu0 if broker_pid else None
            backlog_end, seq_end = buffer_state(buffer_path)
            peak_rss = status_kib(gateway.pid, "VmHWM")
            rss = status_kib(gateway.pid, "VmRSS")
        finally:
            stopped = gateway.stop()
        time.sleep(0.5)  # let the last messages of this run reach the subscriber
        arrivals = recorder.take()
        log_problems = [
            line
            for line in gateway.log().splitlines()
            if line.startswith(("WARNING", "ERROR", "CRITICAL", "Traceback"))
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    window = end - start
    readings, points, partial, latencies = count_window(arrivals, start, end)
    points_per_poll = len(POINT_ADDRESSES)
    return PassResult(
        interval_ms=interval_ms,
        seconds=window,
        points_per_poll=points_per_poll,
        demanded_pts=len(meter_ports) * points_per_poll / (interval_ms / 1000),
        delivered_pts=points / window,
        delivered_polls=readings / window,
        stored_polls=(seq_end - seq_start) / window,
        partial=partial,
        gateway_cpu=100 * gateway_used / window,
        bench_cpu=100 * bench_used / window,
        broker_cpu=None if broker_used is None else 100 * broker_used / window,
        peak_rss_mib=peak_rss / 1024,
        rss_mib=rss / 1024,
        backlog_start=backlog_start,
        backlog_end=backlog_end,
        latency_p50_ms=percentile(latencies, 0.50) if latencies else None,
        latency_p99_ms=percentile(latencies, 0.99) if latencies else None,
        latency_max_ms=latencies[-1] if latencies else None,
        stopped=stopped,
        log_problems=log_problems,
    )


def _broker_pid(broker: MosquittoBroker) -> int | None:
    return broker.pid


# --- main ---------------------------------------------------------------------------------------


def choose_cores() -> tuple[int, int | None, str]:
    """(gateway core, core for everything else or None, description); pins this process."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return cores[0], None, f"one core only: gateway, sims and broker all share core {cores[0]}"
    gateway_core, other_core = cores[0], cores[1]
    # Before any thread or child starts, so the sims' thread, the subscriber and the broker
    # inherit it.
    os.sched_setaffinity(0, {other_core})
    return (
        gateway_core,
        other_core,
        f"gateway on core {gateway_core}; this process (50 sims, fleet subscriber) and "
        f"mosquitto on core {other_core}",
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--interval", default="200ms", help="poll interval of every meter")
    parser.add_argument(
        "--saturation-interval",
        default="20ms",
        help="interval of the second (saturation) pass",
    )
    parser.add_argument("--no-saturation", action="store_true", help="skip the saturation pass")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per pass")
    parser.add_argument("--warmup", type=float, default=3.0, help="ignored seconds per pass")
    parser.add_argument("--quick", action="store_true", help="one 5 s pass, for smoke-testing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not mosquitto_available():
        print("mosquitto is not installed: apt-get install mosquitto (or `make mosquitto`)")
        return 1
    intervals_ms = [parse_duration(args.interval) * 1000]
    seconds: float = args.seconds
    warmup: float = args.warmup
    if args.quick:
        seconds, warmup = 5.0, min(warmup, 2.0)
    elif not args.no_saturation:
        intervals_ms.append(parse_duration(args.saturation_interval) * 1000)

    gateway_core, _other, cores = choose_cores()
    print(
        f"end-to-end: {METERS} simulated SDM630s x {len(POINT_ADDRESSES)} f32 points, "
        f"poll -> SQLite -> MQTT QoS 1 -> PUBACK -> delete; {cores}",
        flush=True,
    )
    results: list[PassResult] = []
    recorder = ArrivalRecorder()
    topic = f"{TOPIC_PREFIX}/{GATEWAY_ID}/devices/+/reading"
    with (
        MosquittoBroker() as broker,
        run_many_in_thread(METERS) as meters,
        FleetSubscriber(broker.port, topic=topic, on_message=recorder.on_message),
    ):
        for interval_ms in intervals_ms:
            print(f"pass: interval {interval_ms:g}ms", flush=True)
            result = run_pass(
                interval_ms=interval_ms,
                seconds=seconds,
                warmup=warmup,
                broker=broker,
                meter_ports=meters.ports,
                recorder=recorder,
                gateway_cpu=gateway_core,
            )
            results.append(result)
            print("  " + result.summary())
            print(result.details())
            for line in result.log_problems[:5]:
                print(f"  gateway log: {line}")
            sys.stdout.flush()

    print()
    print(f"summary ({cores}):")
    for result in results:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
