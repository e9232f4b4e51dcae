"""`make demo`: a simulated SDM630 meter, BLE sensors behind a simulated BlueZ, a local Mosquitto
and the gateway with examples/demo.yaml; prints every reading as it arrives at the broker, until
Ctrl-C. Without dbus-daemon the BLE bus reports its trouble and the meter goes on alone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fieldgate_sim.bluez.simulator import DEMO_BIND_KEY
from fieldgate_sim.fleet import FleetSubscriber, Received
from fieldgate_sim.mosquitto import MosquittoBroker
from fieldgate_sim.processes import terminate

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "examples" / "demo.yaml"
METER_PORT = 5020
BROKER_PORT = 18830


def show(fleet: FleetSubscriber, message: Received) -> None:
    if message.topic.endswith(("/status", "/description", "/health", "/events")):
        print(f"{message.topic} = {message.payload.decode()}", flush=True)
        return
    if not message.topic.endswith("/reading"):
        return
    reading = message.json()
    # The reading's values follow the points of the device's description (sent before it).
    values = fleet.values(reading)
    units = fleet.units(reading)
    shown = "  ".join(
        # A point the meter did not answer this time is null (quality "partial").
        f"{name}={value:.2f}{units[name] or ''}" if isinstance(value, int | float) else f"{name}=-"
        for name, value in values.items()
        if name in ("voltage_l1", "current_l1", "power_total", "frequency", "import_energy")
        or name in ("soc_temperature", "filesystem_free_percent", "load_1m")
        or name in ("temperature", "humidity", "pressure")
    )
    print(f"#{reading['seq']} {reading['ts']} {reading['device']}: {shown}", flush=True)


def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603
        command, cwd=REPO, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )


def start_bluez(processes: list[subprocess.Popen[bytes]]) -> dict[str, str]:
    """The simulated BlueZ on its private bus; the environment that points the gateway at it
    (empty if dbus-daemon is missing: the demo goes on without BLE)."""
    if shutil.which("dbus-daemon") is None and not Path("/usr/bin/dbus-daemon").exists():
        print("no dbus-daemon (make dbus installs it): the demo runs without BLE", flush=True)
        return {}
    key_file = REPO / "var" / "demo" / "bthome-0002.key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(DEMO_BIND_KEY.hex() + "\n")
    sim = subprocess.Popen(
        [sys.executable, "-m", "fieldgate_sim", "ble"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    processes.append(sim)
    assert sim.stdout is not None
    first = sim.stdout.readline().decode().strip()
    if not first.startswith("DBUS_SYSTEM_BUS_ADDRESS="):
        print("the simulated BlueZ did not start: the demo runs without BLE", flush=True)
        return {}
    print(f"simulated BlueZ with BLE sensors on {first.split('=', 1)[1]}", flush=True)
    return {"DBUS_SYSTEM_BUS_ADDRESS": first.split("=", 1)[1]}


def main() -> int:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    processes: list[subprocess.Popen[bytes]] = []
    with MosquittoBroker(port=BROKER_PORT) as broker:
        print(f"mosquitto listening on 127.0.0.1:{broker.port}", flush=True)
        try:
            processes.append(
                start(
                    [sys.executable, "-m", "fieldgate_sim", "modbus-tcp", "--port", str(METER_PORT)]
                )
            )
            ble_env = start_bluez(processes)
            time.sleep(1.0)
            fleet = FleetSubscriber(
                broker.port, topic="fieldgate/#", on_message=lambda m: show(fleet, m)
            )
            with fleet:
                print(f"starting: fieldgate run -c {CONFIG.relative_to(REPO)}", flush=True)
                gateway = [sys.executable, "-m", "gateway", "run", "-c", str(CONFIG)]
                processes.append(start(gateway, ble_env))
                print("readings arriving at the broker (Ctrl-C to stop):", flush=True)
                while not stop.wait(0.5):
                    if any(p.poll() is not None for p in processes):
                        print("a demo process exited; stopping", file=sys.stderr)
                        return 1
        finally:
            for process in reversed(processes):
                terminate(process)
    print("demo stopped; the buffer is in var/demo/buffer.db")
    return 0


if __name__ == "__main__":
    sys.exit(main())
