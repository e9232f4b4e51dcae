"""How long the gateway takes to stop after SIGTERM, at random moments, in the shape that used
to hang: 20 meters polled every 100 ms, SIGTERM within a few ms of a poll slot.

Prints figures only (no pass/fail): the gateway's own measure (its "stopped N ms after the
request" line) and the process's exit as this process sees it, min / median / max, and the exit
codes.

    .venv/bin/python bench/shutdown.py              # 40 stops
    .venv/bin/python bench/shutdown.py --stops 10
"""

from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fieldgate_sim.modbus_server import Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

REPO = Path(__file__).resolve().parent.parent
METERS = 20
INTERVAL_S = 0.1
STOP_TIMEOUT = "5s"
_STOPPED = re.compile(r"stopped (\d+) ms after the request")


def config(broker_port: int, meter_port: int, buffer: Path) -> str:
    devices = "".join(
        f"  - name: m{unit}\n    bus: lan\n    unit_id: {unit}\n    interval: 100ms\n"
        "    points:\n"
        "      - {name: voltage_l1, register: input, address: 0, type: f32, unit: V}\n"
        for unit in range(1, METERS + 1)
    )
    return (
        f"gateway: {{id: bench-stop, stop_timeout: {STOP_TIMEOUT}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}}}\n"
        f"buffer: {{path: {buffer}}}\n"
        "buses:\n"
        f"  - {{name: lan, type: modbus_tcp, host: 127.0.0.1, port: {meter_port}}}\n"
        f"devices:\n{devices}"
    )


def one_stop(config_path: Path, log_path: Path, rng: random.Random) -> tuple[int, float, int]:
    """(exit code, seconds from SIGTERM to exit as seen here, the gateway's own ms)."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    deadline = time.monotonic() + 30
    while "fieldgate running" not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(log_path.read_text(errors="replace"))
        time.sleep(0.02)
    time.sleep(rng.uniform(0.2, 1.0))
    now = time.time()
    slot = math.ceil(now / INTERVAL_S) * INTERVAL_S
    time.sleep(max(0.0, slot - now + rng.uniform(-0.004, 0.004)))
    sent = time.monotonic()
    process.terminate()
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    seen = time.monotonic() - sent
    found = _STOPPED.search(log_path.read_text(errors="replace"))
    return code, seen, int(found.group(1)) if found else -1


def figures(name: str, values: Sequence[float]) -> str:
    return (
        f"{name}: min {min(values):.0f}  median {statistics.median(values):.0f}  "
        f"max {max(values):.0f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stops", type=int, default=40)
    args = parser.parse_args(argv)
    rng = random.Random(20261126)
    codes: list[int] = []
    seen_ms: list[float] = []
    own_ms: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="fieldgate-bench-stop-") as work,
        MosquittoBroker() as broker,
        start_in_thread([Sdm630Meter(unit) for unit in range(1, METERS + 1)]) as meters,
    ):
        for index in range(args.stops):
            config_path = Path(work) / "fieldgate.yaml"
            config_path.write_text(config(broker.port, meters.port, Path(work) / "buffer.db"))
            code, seen, own = one_stop(config_path, Path(work) / f"run-{index}.log", rng)
            codes.append(code)
            seen_ms.append(seen * 1000)
            if own >= 0:
                own_ms.append(own)
    print(
        f"{args.stops} stops, {METERS} meters polled every {INTERVAL_S * 1000:.0f} ms, "
        f"SIGTERM within 4 ms of a poll slot, stop_timeout {STOP_TIMEOUT}"
    )
    print(f"exit codes: {dict(sorted((c, codes.count(c)) for c in set(codes)))}")
    print(figures("SIGTERM to process exit, ms (seen from outside)", seen_ms))
    if own_ms:
        print(figures("SIGTERM to 'stopped', ms (the gateway's own clock)", own_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
