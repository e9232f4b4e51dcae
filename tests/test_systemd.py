"""The unit file is valid for systemd, runs our real CLI, and the daemon tells systemd when it
is ready (Type=notify) and when it stops."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fieldgate_sim.modbus_server import Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

from tests.harness import REPO, gateway_yaml

UNIT = REPO / "systemd" / "fieldgate.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_file_verifies(tmp_path: Path):
    fieldgate = Path(sys.executable).parent / "fieldgate"
    unit = tmp_path / "fieldgate.service"
    unit.write_text(UNIT.read_text().replace("/opt/fieldgate/.venv/bin/fieldgate", str(fieldgate)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_runs_the_cli_we_ship():
    text = UNIT.read_text()
    assert "Type=notify" in text
    assert "RestartPreventExitStatus=78" in text
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[1:] == ["run", "-c", "/etc/fieldgate/fieldgate.yaml"]


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
            assert notify.recv(256) == b"READY=1"
            process.terminate()
            assert notify.recv(256) == b"STOPPING=1"
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
