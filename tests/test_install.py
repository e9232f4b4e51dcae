"""`make install` into a scratch root (DESTDIR), as a technician's `sudo make install` would lay
it out: runtime dependencies only, a unit that verifies, the sysusers and tmpfiles snippets, a
config that passes `check`; a second install keeps an edited config; uninstall keeps the config
and the buffer."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import REPO

PREFIX = "/opt/fieldgate"


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def pins(lock: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#", "-")):
            name, _, version = line.split()[0].partition("==")
            found[name] = version
    return found


def test_the_runtime_lock_pins_what_the_tests_ran_with():
    runtime = pins(REPO / "requirements-runtime.lock")
    everything = pins(REPO / "requirements.lock")
    assert {"pydantic", "pymodbus", "paho-mqtt", "pyyaml"} <= set(runtime)
    assert {name: everything.get(name) for name in runtime} == runtime
    for tool in ("pytest", "mypy", "ruff", "hypothesis", "pip-tools"):
        assert tool not in runtime, f"{tool} is a development tool"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    result = make("install", f"DESTDIR={root}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Next: edit /etc/fieldgate/fieldgate.yaml" in result.stdout
    return root


def test_install_lays_out_the_service(installed: Path):
    for path in (
        "etc/systemd/system/fieldgate.service",
        "usr/lib/sysusers.d/fieldgate.conf",
        "usr/lib/tmpfiles.d/fieldgate.conf",
        "etc/fieldgate/fieldgate.yaml",
        f"{PREFIX[1:]}/venv/bin/fieldgate",
    ):
        assert (installed / path).exists(), path
    fieldgate = installed / PREFIX[1:] / "venv" / "bin" / "fieldgate"
    check = subprocess.run(
        [str(fieldgate), "check", str(installed / "etc/fieldgate/fieldgate.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    listed = subprocess.run(
        [str(installed / PREFIX[1:] / "venv" / "bin" / "python"), "-m", "pip", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.lower()
    for tool in ("pytest", "mypy", "ruff", "hypothesis"):
        assert tool not in listed, f"{tool} was installed on the box"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_installed_unit_verifies(installed: Path, tmp_path: Path):
    unit = (installed / "etc/systemd/system/fieldgate.service").read_text()
    assert f"ExecStart={PREFIX}/venv/bin/fieldgate run" in unit
    # systemd-analyze cannot verify inside a scratch root: point ExecStart where it was put.
    here = tmp_path / "fieldgate.service"
    here.write_text(unit.replace(f"{PREFIX}/venv", str(installed / PREFIX[1:] / "venv")))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(here)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_reinstall_keeps_the_config_and_uninstall_keeps_config_and_buffer(installed: Path):
    config = installed / "etc/fieldgate/fieldgate.yaml"
    config.write_text(config.read_text().replace("change-me", "pumphouse-7"))
    buffer = installed / "var/lib/fieldgate/buffer.db"
    buffer.parent.mkdir(parents=True)
    buffer.write_bytes(b"readings")
    again = make("install", f"DESTDIR={installed}")
    assert again.returncode == 0, again.stderr
    assert "kept the existing /etc/fieldgate/fieldgate.yaml" in again.stdout
    assert "pumphouse-7" in config.read_text()
    gone = make("uninstall", f"DESTDIR={installed}")
    assert gone.returncode == 0, gone.stderr
    assert not (installed / PREFIX[1:] / "venv").exists()
    assert not (installed / "etc/systemd/system/fieldgate.service").exists()
    assert "pumphouse-7" in config.read_text()
    assert buffer.read_bytes() == b"readings"
