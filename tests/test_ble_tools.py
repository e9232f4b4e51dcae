"""`fieldgate scan ble`, run as a technician runs it, against the simulated BlueZ."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from fieldgate_sim.bluez.simulator import DEMO_BIND_KEY, Kind, SimSensor, SimulatedBluetooth

from tests.harness import REPO


def fieldgate(bus_address: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``fieldgate ARGS`` with the simulated BlueZ's bus as the system bus."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus_address},
        timeout=60,
        check=False,
    )


def scan(bus_address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return fieldgate(bus_address, "scan", *args)


def test_scan_ble_lists_sensors_with_values_and_a_snippet_to_paste():
    sensors = [
        SimSensor(Kind.RUUVI, "C4:7C:8D:00:00:03", "Ruuvi 0003", seed=3),
        SimSensor(Kind.BTHOME_ENCRYPTED, "A4:C1:38:00:00:02", "BTHome 0002", seed=2),
        SimSensor(Kind.GATT, "F0:F0:00:00:00:09", "GATT thermo 0009", seed=9),
    ]
    with SimulatedBluetooth(sensors) as bt:
        result = scan(bt.address, "ble", "--seconds", "2")
    assert result.returncode == 0, result.stderr
    assert "listening on hci0: 1/2s" in result.stderr
    table, _, snippet = result.stdout.partition("\n\n")
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert set(rows) == {"C4:7C:8D:00:00:03", "A4:C1:38:00:00:02", "F0:F0:00:00:00:09"}
    assert "ruuvi" in rows["C4:7C:8D:00:00:03"]
    assert "temperature=" in rows["C4:7C:8D:00:00:03"]
    assert "needs its bind key" in rows["A4:C1:38:00:00:02"]
    pasted = yaml.safe_load(snippet)
    assert pasted[0]["address"] == "C4:7C:8D:00:00:03"
    assert pasted[0]["format"] == "ruuvi"
    assert pasted[1]["bind_key_file"].endswith(".key")
    assert len(pasted) == 2, "only what fieldgate can decode is offered"


def test_scan_ble_says_why_when_bluez_is_absent():
    with SimulatedBluetooth(bluez=False) as bt:
        result = scan(bt.address, "ble", "--seconds", "1")
    assert result.returncode == 69
    assert "BlueZ (bluetoothd) is not running" in result.stderr


def test_the_simulator_runs_by_hand_and_stops_on_sigterm():
    sim = subprocess.Popen(
        [sys.executable, "-m", "fieldgate_sim", "ble", "--sensors", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert sim.stdout is not None
        first = sim.stdout.readline()
        assert first.startswith("DBUS_SYSTEM_BUS_ADDRESS=unix:path="), first
        key_line = sim.stdout.readline()
        key_file = key_line.rsplit(": ", 1)[1].strip()
        assert Path(key_file).read_text().strip() == DEMO_BIND_KEY.hex()
        result = scan(first.split("=", 1)[1].strip(), "ble", "--seconds", "2")
        assert result.returncode == 0, result.stderr
        assert "02:00:00:00:00:01" in result.stdout
        sim.send_signal(signal.SIGTERM)
        _, stderr = sim.communicate(timeout=10)
        assert sim.returncode == 0, stderr
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()


def test_read_polls_a_gatt_sensor_now_and_explains_an_advertiser(tmp_path: Path):
    config = tmp_path / "fieldgate.yaml"
    config.write_text(
        "gateway: {id: gw}\nmqtt: {host: 127.0.0.1}\nbuffer: {path: /var/lib/fieldgate/b.db}\n"
        "buses: [{name: radio, type: ble, connect_timeout: 5s}]\n"
        "devices:\n"
        "  - {name: ruuvi, bus: radio, address: 'C4:7C:8D:00:00:03'}\n"
        "  - name: gatt\n    bus: radio\n    address: 'F0:F0:00:00:00:09'\n    points:\n"
        "      - {name: battery, characteristic: 2a19, type: u8, unit: '%'}\n"
    )
    sensors = [
        SimSensor(Kind.RUUVI, "C4:7C:8D:00:00:03", "Ruuvi 0003", seed=3),
        SimSensor(Kind.GATT, "F0:F0:00:00:00:09", "GATT thermo 0009", seed=9),
    ]
    with SimulatedBluetooth(sensors) as bt:
        gatt = fieldgate(bt.address, "read", "-c", str(config), "gatt")
        sent = bt.call(lambda: list(bt.sensor("F0:F0:00:00:00:09").sent))
        ruuvi = fieldgate(bt.address, "read", "-c", str(config), "ruuvi")
    assert gatt.returncode == 0, gatt.stderr
    rows = {line.split()[0]: line.split()[1:] for line in gatt.stdout.splitlines()[2:]}
    assert float(rows["battery"][0]) == sent[-1]["battery"]
    assert ruuvi.returncode == 69
    assert "not read on demand" in ruuvi.stderr


def test_scan_of_a_ble_bus_named_in_the_config_listens_on_its_adapter(tmp_path: Path):
    config = tmp_path / "fieldgate.yaml"
    config.write_text(
        "gateway: {id: gw}\nmqtt: {host: 127.0.0.1}\nbuffer: {path: /var/lib/fieldgate/b.db}\n"
        "buses: [{name: lan, type: modbus_tcp, host: 127.0.0.1}, {name: radio, type: ble}]\n"
        "devices: [{name: m, bus: lan, points: [{name: v, address: 0, type: u16}]}]\n"
    )
    sensors = [SimSensor(Kind.PVVX, "A4:C1:38:00:00:04", "ATC_000004", seed=4)]
    with SimulatedBluetooth(sensors) as bt:
        result = scan(bt.address, "-c", str(config), "radio", "--seconds", "1")
    assert result.returncode == 0, result.stderr
    assert "A4:C1:38:00:00:04" in result.stdout
    assert "bus: radio" in result.stdout
