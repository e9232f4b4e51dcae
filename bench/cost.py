"""Cost per point (issue 11): CPU, memory, Modbus requests and saturation, in one command.

The issue's shape: simulated Eastron SDM630 meters, 30 float32 points each (the template's
points), one Modbus TCP endpoint per meter, polled every second, a local Mosquitto, QoS 1,
the SQLite buffer durable (synchronous=FULL). The gateway runs as a child process pinned to
one core; the simulators, the broker and the fleet subscriber share the other core.

Every figure is counted, not assumed: CPU is the gateway process's own utime + stime from
/proc/<pid>/stat over the measured window; points are those that reached the broker (seen by a
subscriber, each seq once); requests are those the simulated meters answered; RSS is
/proc/<pid>/status (VmHWM for peak, VmRSS for steady). Each figure is printed with its ratio to
the issue's target (ratio <= 1 meets it). The box is shared: runs are repeated and the spread
printed. Prints figures only: no assertion, no pass/fail.

    python -m bench.cost                  # everything (about 12 minutes)
    python -m bench.cost --quick          # shorter windows, one repeat (about 5 minutes)
    python -m bench.cost --only cpu       # one section: cpu, memory, requests, saturation
    python -m bench.cost --soak 3600      # one 100-device gateway for an hour: its RSS curve
    python -m bench.cost --profile /tmp/p # also py-spy an extra run of each config; then
    python bench/spy_top.py /tmp/p.template.txt
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import ServerFleet, run_many_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker, mosquitto_available

from bench.end_to_end import (
    STARTUP_TIMEOUT_S,
    ArrivalRecorder,
    Gateway,
    buffer_state,
    choose_cores,
    cpu_seconds,
    percentile,
    status_kib,
)

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "drivers" / "modbus" / "templates" / "eastron-sdm630.yaml"
GATEWAY_ID = "cost"
TOPIC_PREFIX = "fieldgate"

# The targets.
CPU_MS_PER_1000_TARGET = 10.0
RSS_100_TARGET_MIB = 40.0
GROWTH_PER_DEVICE_TARGET_MIB = 0.05
KNEE_DEVICES = 400


# --- configuration -------------------------------------------------------------------------


def template_points() -> list[dict[str, Any]]:
    """The SDM630 template's 30 points, as a technician would copy them into a config."""
    points: list[dict[str, Any]] = yaml.safe_load(TEMPLATE.read_text())["points"]
    return points


def gateway_config(
    broker_port: int,
    meter_ports: Sequence[int],
    *,
    interval: str,
    buffer: Path,
    naive: bool,
    max_inflight: int | None,
) -> str:
    """The whole config as JSON (which the YAML loader reads). ``naive``: the points listed by
    hand, no ``max_gap`` nor ``max_block``; otherwise the template, which carries the meter's
    limits."""
    points = template_points()
    device: Callable[[int], dict[str, Any]]
    if naive:

        def device(n: int) -> dict[str, Any]:
            return {"name": f"meter{n:03d}", "bus": f"bus{n:03d}", "points": points}

    else:

        def device(n: int) -> dict[str, Any]:
            return {"name": f"meter{n:03d}", "bus": f"bus{n:03d}", "template": "eastron-sdm630"}

    mqtt: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker_port,
        "topic_prefix": TOPIC_PREFIX,
        "keepalive": "30s",
        "reconnect_max": "1s",
    }
    if max_inflight is not None:
        mqtt["max_inflight"] = max_inflight
    return json.dumps(
        {
            "gateway": {"id": GATEWAY_ID},
            "mqtt": mqtt,
            "buffer": {"path": str(buffer)},
            "buses": [
                {
                    "name": f"bus{n:03d}",
                    "type": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": port,
                    "timeout": "1s",
                }
                for n, port in enumerate(meter_ports)
            ],
            "devices": [
                {**device(n), "unit_id": 1, "interval": interval} for n in range(len(meter_ports))
            ],
        },
        indent=1,
    )


# --- the fleet side ---------------------------------------------------------------------------


def _read_time(message: dict[str, Any]) -> float | None:
    """The reading's read time in epoch seconds, whichever way the dialect writes it (ISO 8601
    text or epoch milliseconds): the payload format is being redesigned beside this bench."""
    for key in ("ts", "t", "time_ms", "read_at_ms"):
        value = message.get(key)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value / 1000 if value > 1e11 else float(value)
    return None


def _point_count(message: dict[str, Any], default: int) -> int:
    values = message.get("values", message.get("v"))
    if isinstance(values, dict | list):
        return sum(1 for v in (values.values() if isinstance(values, dict) else values) if v)
    return default


@dataclass(frozen=True)
class Window:
    readings: int
    points: int
    latencies_ms: list[float]


def count_window(
    arrivals: list[tuple[float, bytes]], start: float, end: float, points_per_reading: int
) -> Window:
    """Readings (first arrival of each seq) that arrived within [start, end)."""
    seen: set[int] = set()
    readings = points = 0
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
        points += _point_count(message, points_per_reading)
        read_at = _read_time(message)
        if read_at is not None:
            latencies.append((arrived - read_at) * 1000)
    latencies.sort()
    return Window(readings, points, latencies)


# --- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    devices: int
    interval: str
    naive: bool
    seconds: float
    demanded_pts: float
    delivered_pts: float
    cpu_s: float
    peak_rss_mib: float
    rss_mib: float
    rss_curve_mib: list[float]
    requests_per_poll: float
    backlog_end: int
    p50_ms: float | None
    p99_ms: float | None
    bench_cpu_pct: float

    @property
    def cpu_ms_per_1000(self) -> float:
        points = self.delivered_pts * self.seconds
        return 1000 * self.cpu_s / (points / 1000) if points else float("inf")

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.seconds

    @property
    def delivered_ratio(self) -> float:
        return self.delivered_pts / self.demanded_pts

    def line(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.0f}"

        return (
            f"    {self.devices} devices @ {self.interval} ({'naive' if self.naive else 'template'}"
            f"): {self.cpu_ms_per_1000:.2f} CPU-ms/1000 pts, CPU {self.cpu_pct:.0f}% of a core, "
            f"delivered {self.delivered_pts:.0f}/{self.demanded_pts:.0f} pts/s, "
            f"p50 {ms(self.p50_ms)} ms p99 {ms(self.p99_ms)} ms, backlog {self.backlog_end}, "
            f"RSS peak {self.peak_rss_mib:.1f} end {self.rss_mib:.1f} MiB, "
            f"{self.requests_per_poll:.2f} requests/poll, bench side {self.bench_cpu_pct:.0f}%"
        )


@dataclass
class Rig:
    broker: MosquittoBroker
    meters: ServerFleet
    arrivals: ArrivalRecorder
    gateway_core: int
    seconds: float
    warmup: float


def run_once(
    rig: Rig,
    devices: int,
    *,
    interval: str = "1s",
    naive: bool = False,
    max_inflight: int | None = None,
    profile: Path | None = None,
) -> Run:
    """One gateway over one measured window. ``profile``: also sample the gateway with
    py-spy over the window (idle waits left out, native frames in) into that file."""
    meters = list(rig.meters)[:devices]
    interval_s = _seconds(interval)
    ports = [meter.port for meter in meters]
    with _gateway(rig, ports, interval, naive, max_inflight) as (gateway, buffer_path):
        time.sleep(rig.warmup)
        start = time.time()
        cpu0 = cpu_seconds(gateway.pid)
        bench0 = time.process_time()
        requests0 = sum(meter.requests_served for meter in meters)
        _, seq0 = buffer_state(buffer_path)
        spy = _py_spy(gateway.pid, rig.seconds, profile) if profile else None
        curve: list[float] = []
        deadline = time.monotonic() + rig.seconds
        while time.monotonic() < deadline and gateway.process.poll() is None:
            curve.append(status_kib(gateway.pid, "VmRSS") / 1024)
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        end = time.time()
        if gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway exited mid-window:\n{gateway.log()[-2000:]}")
        cpu = cpu_seconds(gateway.pid) - cpu0
        bench_cpu = time.process_time() - bench0
        requests = sum(meter.requests_served for meter in meters) - requests0
        backlog, seq1 = buffer_state(buffer_path)
        peak = status_kib(gateway.pid, "VmHWM") / 1024
        rss = status_kib(gateway.pid, "VmRSS") / 1024
        if spy is not None:
            spy.wait(timeout=60)
    time.sleep(0.5)
    arrivals = rig.arrivals.take()
    window = end - start
    points_per_reading = len(template_points())
    counted = count_window(arrivals, start, end, points_per_reading)
    polls = seq1 - seq0
    lat = counted.latencies_ms
    return Run(
        devices=devices,
        interval=interval,
        naive=naive,
        seconds=window,
        demanded_pts=devices * points_per_reading / interval_s,
        delivered_pts=counted.points / window,
        cpu_s=cpu,
        peak_rss_mib=peak,
        rss_mib=rss,
        rss_curve_mib=curve,
        requests_per_poll=requests / polls if polls else float("nan"),
        backlog_end=backlog,
        p50_ms=percentile(lat, 0.5) if lat else None,
        p99_ms=percentile(lat, 0.99) if lat else None,
        bench_cpu_pct=100 * bench_cpu / window,
    )


@contextmanager
def _gateway(
    rig: Rig, ports: Sequence[int], interval: str, naive: bool, max_inflight: int | None
) -> Iterator[tuple[Gateway, Path]]:
    """A gateway polling the meters on ``ports`` with a fresh buffer (the gateway and the
    buffer's path), running once its log says so; stopped and its files removed after."""
    workdir = Path(tempfile.mkdtemp(prefix="fieldgate-cost-"))
    try:
        buffer_path = workdir / "buffer.db"
        config_path = workdir / "fieldgate.yaml"
        config_path.write_text(
            gateway_config(
                rig.broker.port,
                ports,
                interval=interval,
                buffer=buffer_path,
                naive=naive,
                max_inflight=max_inflight,
            )
        )
        rig.arrivals.take()
        gateway = Gateway(config_path, workdir / "gateway.log", rig.gateway_core)
        try:
            gateway.wait_running(STARTUP_TIMEOUT_S)
            yield gateway, buffer_path
        finally:
            gateway.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _py_spy(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "--pid", str(pid), "--duration", f"{seconds:.0f}"]
    command += ["--rate", "250", "--native", "--format", "raw", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _seconds(interval: str) -> float:
    from gateway.quantities import parse_duration  # noqa: PLC0415 - only for the bench

    return parse_duration(interval)


# --- sections ---------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    middle = statistics.median(values)
    return f"median {middle:.2f} (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"


def ratio(value: float, target: float) -> str:
    return f"ratio to target {value / target:.2f} ({'meets' if value <= target else 'misses'})"


def cpu_section(rig: Rig, repeat: int, profile: Path | None = None) -> list[Run]:
    print("CPU: 100 devices x 30 f32 points @ 1s, durable SQLite, QoS 1, PUBACK", flush=True)
    runs: list[Run] = []
    for naive in (False, True):
        label = "naive config (points listed, no max_gap)" if naive else "template config"
        if profile is not None:
            # Sampling costs the gateway CPU of its own: a run of its own, not counted.
            spy = profile.with_suffix(f".{'naive' if naive else 'template'}.txt")
            print(run_once(rig, 100, naive=naive, profile=spy).line() + f" [py-spy: {spy}]")
        batch = []
        for _ in range(repeat):
            run = run_once(rig, 100, naive=naive)
            print(run.line(), flush=True)
            batch.append(run)
        figures = [r.cpu_ms_per_1000 for r in batch]
        print(
            f"  {label}: CPU-ms per 1000 points {spread(figures)}; "
            f"{ratio(statistics.median(figures), CPU_MS_PER_1000_TARGET)} (target <= 10)",
            flush=True,
        )
        runs.extend(batch)
    return runs


def memory_section(rig: Rig, repeat: int, earlier: Sequence[Run]) -> None:
    print("Memory: RSS with 100 and 200 devices", flush=True)
    at_100 = [r for r in earlier if r.devices == 100 and not r.naive][:repeat]
    while len(at_100) < repeat:
        at_100.append(run_once(rig, 100))
        print(at_100[-1].line(), flush=True)
    at_200 = []
    for _ in range(repeat):
        at_200.append(run_once(rig, 200))
        print(at_200[-1].line(), flush=True)
    peak = [r.peak_rss_mib for r in at_100]
    steady = [r.rss_mib for r in at_100]
    growth = [(b.rss_mib - a.rss_mib) / 100 for a, b in zip(at_100, at_200, strict=False)]
    curve = at_100[0].rss_curve_mib
    print(
        f"  peak RSS at 100 devices: {spread(peak)} MiB; "
        f"{ratio(statistics.median(peak), RSS_100_TARGET_MIB)} (target <= 40 MB)"
    )
    print(
        f"  steady RSS at 100 devices: {spread(steady)} MiB; "
        f"{ratio(statistics.median(steady), RSS_100_TARGET_MIB)}"
    )
    print(
        f"  growth per extra device (steady RSS, 200 vs 100): {spread(growth)} MiB; "
        f"{ratio(statistics.median(growth), GROWTH_PER_DEVICE_TARGET_MIB)} (target <= 0.05)"
    )
    print(
        f"  RSS over the window at 100 devices (1 s apart): {' '.join(f'{v:.1f}' for v in curve)}",
        flush=True,
    )


def requests_section(earlier: Sequence[Run]) -> None:
    print("Modbus requests per meter per cycle (answered by the simulated meters)", flush=True)
    for naive in (False, True):
        figures = [r.requests_per_poll for r in earlier if r.devices == 100 and r.naive is naive]
        label = "naive config" if naive else "template config"
        if figures:
            print(f"  {label}: {spread(figures)} (fewest the SDM630 allows: 2)")


def saturation_section(rig: Rig, max_inflight: int | None) -> None:
    print("Saturation: CPU per point and latency from 10 to 400 devices @ 1s", flush=True)
    rows = []
    for devices in (10, 50, 100, 200, 400):
        run = run_once(rig, devices, max_inflight=max_inflight)
        print(run.line(), flush=True)
        rows.append(run)
    print(
        "  | devices | pts/s delivered/demanded | CPU % core | CPU-ms/1000 pts (ratio) | "
        "p50 ms | p99 ms | backlog |"
    )
    for r in rows:
        print(
            f"  | {r.devices} | {r.delivered_pts:.0f}/{r.demanded_pts:.0f} | {r.cpu_pct:.0f} | "
            f"{r.cpu_ms_per_1000:.2f} ({r.cpu_ms_per_1000 / CPU_MS_PER_1000_TARGET:.2f}) | "
            f"{r.p50_ms or 0:.0f} | {r.p99_ms or 0:.0f} | {r.backlog_end} |"
        )
    base = rows[0].cpu_ms_per_1000
    knee = [r.devices for r in rows if r.cpu_ms_per_1000 > 1.5 * base or r.delivered_ratio < 0.97]
    print(
        f"  knee (CPU/point > 1.5x that at 10 devices, or < 97% delivered): "
        f"{knee[0] if knee else 'none'} (target: none below {KNEE_DEVICES})"
    )
    print("Saturation: points/s on one core (400 devices, shorter intervals)", flush=True)
    best: Run | None = None
    for interval in ("500ms", "250ms"):
        run = run_once(rig, 400, interval=interval, max_inflight=max_inflight)
        print(run.line(), flush=True)
        if best is None or run.delivered_pts > best.delivered_pts:
            best = run
    assert best is not None
    print(
        f"  most points/s delivered with the gateway on one core: {best.delivered_pts:.0f} at "
        f"{best.cpu_pct:.0f}% of that core (CPU-bound estimate "
        f"{best.delivered_pts * 100 / best.cpu_pct:.0f} points/s; the other core runs the "
        f"simulators, the broker and the subscriber: see 'bench side')",
        flush=True,
    )
    wide = run_once(rig, 400, interval="250ms", max_inflight=1000)
    print(wide.line() + "  [mqtt.max_inflight 1000]", flush=True)


def soak_section(rig: Rig, seconds: float, every: float, devices: int = 100) -> None:
    """One gateway for ``seconds``, its RSS sampled every ``every`` seconds and printed as it
    comes, then the curve's start, least, most, end and slope (a least-squares line through
    the samples, MiB an hour; also through the second half alone, past any warm-up). The
    messages that reached the broker are counted and dropped at each sample, so an hour does
    not pile up in this process."""
    print(
        f"Soak: {devices} devices x 30 f32 points @ 1s for {seconds:.0f} s, RSS every "
        f"{every:.0f} s",
        flush=True,
    )
    ports = [meter.port for meter in list(rig.meters)[:devices]]
    with _gateway(rig, ports, "1s", False, None) as (gateway, buffer_path):
        started = time.monotonic()
        samples: list[tuple[float, float]] = []
        delivered = 0
        while gateway.process.poll() is None:
            elapsed = time.monotonic() - started
            rss = status_kib(gateway.pid, "VmRSS") / 1024
            samples.append((elapsed, rss))
            delivered += len(rig.arrivals.take())
            backlog, seq = buffer_state(buffer_path)
            print(
                f"  {elapsed / 60:6.1f} min  RSS {rss:6.2f} MiB  peak "
                f"{status_kib(gateway.pid, 'VmHWM') / 1024:6.2f} MiB  readings stored {seq}"
                f"  delivered {delivered}  backlog {backlog}",
                flush=True,
            )
            if elapsed >= seconds:
                break
            time.sleep(max(0.0, min(every, seconds - elapsed)))
        if gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway exited mid-soak:\n{gateway.log()[-2000:]}")
    values = [rss for _, rss in samples]
    second_half = samples[len(samples) // 2 :]
    print(
        f"  RSS start {values[0]:.2f}, min {min(values):.2f}, max {max(values):.2f}, end "
        f"{values[-1]:.2f} MiB; slope {_slope(samples) * 3600:+.3f} MiB/h (second half "
        f"{_slope(second_half) * 3600:+.3f} MiB/h)",
        flush=True,
    )


def _slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, MiB a second; 0 for fewer than two."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [x for x, _ in samples], [y for _, y in samples]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread_x = sum((x - mean_x) ** 2 for x in xs)
    if spread_x == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in samples) / spread_x


# --- main ---------------------------------------------------------------------------------------


@contextmanager
def rig(devices: int, seconds: float, warmup: float) -> Iterator[Rig]:
    gateway_core, _other, cores = choose_cores()
    print(f"cost bench: {cores.replace('50 sims', f'{devices} sims')}", flush=True)
    arrivals = ArrivalRecorder()
    topic = f"{TOPIC_PREFIX}/{GATEWAY_ID}/devices/+/reading"
    with (
        MosquittoBroker() as broker,
        run_many_in_thread(devices) as meters,
        FleetSubscriber(broker.port, topic=topic, on_message=arrivals.on_message),
    ):
        yield Rig(broker, meters, arrivals, gateway_core, seconds, warmup)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="10 s windows, one repeat")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="ignored seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per CPU and memory figure")
    parser.add_argument(
        "--only", choices=("cpu", "memory", "requests", "saturation"), action="append"
    )
    parser.add_argument(
        "--max-inflight", type=int, default=None, help="mqtt.max_inflight (default: the config's)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy an extra (uncounted) CPU run of each config into PROFILE.{template,naive}.txt",
    )
    parser.add_argument(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="instead of the sections: one 100-device gateway this long, its RSS curve",
    )
    parser.add_argument(
        "--soak-every", type=float, default=60.0, metavar="SECONDS", help="soak: RSS sample period"
    )
    args = parser.parse_args(argv)
    if not mosquitto_available():
        print("mosquitto is not installed: apt-get install mosquitto (or `make mosquitto`)")
        return 1
    seconds, warmup, repeat = args.seconds, args.warmup, args.repeat
    if args.quick:
        seconds, warmup, repeat = 10.0, 3.0, 1
    if args.soak is not None:
        with rig(100, seconds, warmup) as bench:
            soak_section(bench, args.soak, args.soak_every)
        return 0
    sections = set(args.only or ("cpu", "memory", "requests", "saturation"))
    with rig(400 if "saturation" in sections else 200, seconds, warmup) as bench:
        runs: list[Run] = []
        if sections & {"cpu", "memory", "requests"}:
            runs = cpu_section(bench, repeat, args.profile)
        if "requests" in sections:
            requests_section(runs)
        if "memory" in sections:
            memory_section(bench, repeat, runs)
        if "saturation" in sections:
            saturation_section(bench, args.max_inflight)
    return 0


if __name__ == "__main__":
    sys.exit(main())
