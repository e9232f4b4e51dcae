"""Helpers to run the gateway as a child process against real parts, and to write its config."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.processes import terminate

from gateway.config.handover import to_settings
from gateway.config.loader import parse_config
from gateway.settings import GatewaySettings

REPO = Path(__file__).resolve().parent.parent


def gateway_yaml(
    broker_port: int,
    buffer_path: Path,
    buses: str,
    devices: str,
    *,
    gateway_id: str = "gw-test",
    keepalive: str = "30s",
    stop_timeout: str = "10s",
) -> str:
    """A whole config file; ``buses`` and ``devices`` are YAML list items (``- name: ...``)."""
    return (
        textwrap.dedent(
            f"""\
            gateway:
              id: {gateway_id}
              stop_timeout: {stop_timeout}
            mqtt:
              host: 127.0.0.1
              port: {broker_port}
              keepalive: {keepalive}
              reconnect_max: 1s
            buffer:
              path: {buffer_path}
            """
        )
        + "buses:\n"
        + textwrap.indent(textwrap.dedent(buses), "  ")
        + "devices:\n"
        + textwrap.indent(textwrap.dedent(devices), "  ")
    )


class GatewayProcess:
    """``fieldgate run`` as a child process, with its log in a file."""

    def __init__(
        self, config_path: Path, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.config_path = config_path
        self.log_path = log_path
        #: Added to the environment (the private system bus of a simulated BlueZ, say).
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> None:
        # Several runs may share one log file: waits look only at this run's part.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, like a power cut for the process."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, as systemd stops it; returns the exit code."""
        assert self.process is not None
        code = terminate(self.process, timeout)
        assert code is not None, f"the gateway did not stop within {timeout}s of SIGTERM"
        return code

    def log(self) -> str:
        """Everything logged by every run of this gateway."""
        return self.log_path.read_text(errors="replace")

    def this_run_log(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def catches_sigterm(self) -> bool:
        """Whether the process has its own SIGTERM handler yet (from /proc: SigCgt)."""
        assert self.process is not None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return False
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))

    def wait_for_log(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.this_run_log():
                return True
            time.sleep(0.05)
        return False


def settings_from_text(text: str) -> GatewaySettings:
    """A config's settings, as `fieldgate run` holds them (validated here, not in a child)."""
    return to_settings(parse_config(text))


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def start_gateway(
    started: list[GatewayProcess],
    tmp_path: Path,
    config_text: str,
    env: dict[str, str] | None = None,
) -> GatewayProcess:
    config_path = tmp_path / "fieldgate.yaml"
    config_path.write_text(config_text)
    gateway = GatewayProcess(config_path, tmp_path / "gateway.log", env)
    gateway.start()
    started.append(gateway)
    return gateway


def reading_seqs(readings: list[dict[str, object]]) -> list[int]:
    seqs = []
    for reading in readings:
        seq = reading["seq"]
        assert isinstance(seq, int)
        seqs.append(seq)
    return seqs


def run_fieldgate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``fieldgate ARGS`` (as ``python -m gateway``), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def buffered(path: Path) -> tuple[set[int], int]:
    """The sequence numbers waiting in a buffer file, and the newest ever given; checks the
    file's integrity on the way."""
    if not path.exists():
        return set(), 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        waiting = {row[0] for row in db.execute("SELECT seq FROM readings")}
        newest = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    return waiting, int(newest[0]) if newest else 0


def nothing_lost(buffer_path: Path, fleet: FleetSubscriber | None) -> None:
    """Every reading the gateway numbered is still in the buffer or at the fleet (a row leaves
    the buffer only after the broker acknowledged it)."""
    waiting, newest = buffered(buffer_path)
    left = set(range(1, newest + 1)) - waiting
    if fleet is None:
        assert not left, "rows left the buffer with no broker to take them"
        return
    assert fleet.wait_for(lambda f: left <= set(reading_seqs(f.readings())), timeout=30), sorted(
        left - set(reading_seqs(fleet.readings()))
    )[:20]


@contextlib.contextmanager
def held_write_lock(path: Path) -> Iterator[Callable[[], None]]:
    """Another connection holding the buffer's write lock (BEGIN IMMEDIATE): every write of
    the buffer waits for its busy timeout and fails with "database is locked". Gives the
    function that releases it early."""
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")

    def release() -> None:
        if locker.in_transaction:
            locker.execute("ROLLBACK")

    try:
        yield release
    finally:
        release()
        locker.close()
