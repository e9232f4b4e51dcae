"""A meter that stops answering: the gateway keeps running, keeps the other meter on time, logs
the failure once and the recovery once. Also `fieldgate read` against the simulated SDM630."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

from tests.harness import REPO, GatewayProcess, gateway_yaml, start_gateway


def meter_bus(name: str, port: int) -> str:
    return (
        f"- name: {name}\n  type: modbus_tcp\n  host: 127.0.0.1\n  port: {port}\n"
        "  timeout: 300ms\n  reconnect_max: 1s\n"
    )


def meter_device(name: str, bus: str) -> str:
    return (
        f"- name: {name}\n  bus: {bus}\n  interval: 500ms\n  points:\n"
        "    - {name: frequency, register: input, address: 0x46, type: f32, unit: Hz}\n"
    )


def read_times(fleet: FleetSubscriber, device: str) -> list[float]:
    return [
        datetime.fromisoformat(r["ts"]).timestamp()
        for r in fleet.readings()
        if r["device"] == device
    ]


def test_silent_meter_is_logged_once_and_does_not_delay_the_other(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    with (
        start_in_thread([Sdm630Meter(1)]) as flaky,
        start_in_thread([Sdm630Meter(1)]) as steady,
    ):
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            meter_bus("flaky-lan", flaky.port) + meter_bus("steady-lan", steady.port),
            meter_device("flaky", "flaky-lan") + meter_device("steady", "steady-lan"),
        )
        gateway = start_gateway(gateways, tmp_path, config)
        assert fleet.wait_for(lambda f: len(read_times(f, "flaky")) >= 2, timeout=20)

        flaky.set_silent(True)
        silent_from = time.time()
        time.sleep(4)
        silent_until = time.time()
        flaky.set_silent(False)

        assert gateway.wait_for_log("answers again", timeout=15), gateway.log()
        count_after_recovery = len(read_times(fleet, "flaky"))
        assert fleet.wait_for(
            lambda f: len(read_times(f, "flaky")) >= count_after_recovery + 2, timeout=10
        )
        assert gateway.process is not None
        assert gateway.process.poll() is None, "the gateway must survive a silent meter"
        assert gateway.stop() == 0

    log = gateway.log()
    assert log.count("device flaky failed") == 1, log
    assert "no valid answer within the timeout" in log
    assert log.count("device flaky answers again") == 1, log
    assert "steady" not in log.replace("steady-lan", ""), log

    # The steady meter went on through the outage (that it kept every slot of its schedule is
    # proven on an injected clock in test_scheduler.py: counted there, not timed here).
    steady_times = [t for t in read_times(fleet, "steady") if silent_from <= t <= silent_until]
    assert steady_times
    # And the flaky one sent nothing while silent (no made-up values).
    flaky_during = [t for t in read_times(fleet, "flaky") if silent_from + 0.5 < t < silent_until]
    assert flaky_during == []


def fieldgate_read(config: Path, device: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "read", "-c", str(config), device],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_read_prints_a_table_of_the_meter(tmp_path: Path):
    with start_in_thread([Sdm630Meter(1)]) as meter:
        config = tmp_path / "fieldgate.yaml"
        config.write_text(
            (REPO / "examples" / "demo.yaml")
            .read_text()
            .replace("port: 5020", f"port: {meter.port}")
        )
        result = fieldgate_read(config, "main-meter")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("main-meter read at ")
    assert lines[1].split() == ["point", "value", "unit"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert 200 < float(rows["voltage_l1"][0]) < 260
    assert rows["voltage_l1"][1] == "V"
    assert 49 < float(rows["frequency"][0]) < 51
    assert rows["import_energy"][1] == "kWh"
    assert len(rows) == 11


def test_read_of_an_unreachable_meter_says_so(tmp_path: Path):
    config = tmp_path / "fieldgate.yaml"
    # Port 9 (discard) on loopback: nothing listens, the connect is refused at once.
    config.write_text((REPO / "examples" / "demo.yaml").read_text().replace("5020", "9"))
    result = fieldgate_read(config, "main-meter")
    assert result.returncode == 69
    assert "main-meter: modbus_tcp meters-lan (127.0.0.1:9): cannot connect" in result.stderr
