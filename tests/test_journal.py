"""Logs as journald wants them: the priority as an sd-daemon prefix only when stderr is the
journal (JOURNAL_STREAM names it), plain level names otherwise; the first line says where the
gateway sends, what it polls and what waits from before."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.journal import JournalFormatter, writes_to_journal
from tests.harness import REPO


def stream_id(path: Path) -> str:
    status = path.stat()
    return f"{status.st_dev}:{status.st_ino}"


def test_the_journal_is_recognised_by_its_device_and_inode(tmp_path: Path):
    journal, other = tmp_path / "journal", tmp_path / "other"
    journal.write_text("")
    other.write_text("")
    with journal.open("w") as stream:
        assert writes_to_journal(stream, {"JOURNAL_STREAM": stream_id(journal)})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": stream_id(other)})
        assert not writes_to_journal(stream, {})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": "garbage"})


def test_priorities_are_sd_daemon_prefixes():
    formatter = JournalFormatter()

    def line(level: int) -> str:
        record = logging.LogRecord("gateway.x", level, __file__, 1, "said %s", ("it",), None)
        return formatter.format(record)

    assert line(logging.ERROR) == "<3>gateway.x: said it"
    assert line(logging.WARNING) == "<4>gateway.x: said it"
    assert line(logging.INFO) == "<6>gateway.x: said it"
    assert line(logging.DEBUG) == "<7>gateway.x: said it"


def test_the_daemon_under_journald_prefixes_priorities_and_names_what_it_runs(tmp_path: Path):
    config = tmp_path / "fieldgate.yaml"
    config.write_text(
        "gateway: {id: gw-journal, stop_timeout: 5s}\n"
        "mqtt: {host: 127.0.0.1, port: 9, reconnect_max: 1s}\n"  # nothing listens: a warning
        f"buffer: {{path: {tmp_path / 'b.db'}}}\n"
        "buses: [{name: this-box, type: host}]\n"
        "devices: [{name: box-health, bus: this-box, interval: 1s, filesystem: /}]\n"
    )
    journal = tmp_path / "journal"
    with journal.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            cwd=REPO,
            env={**os.environ, "JOURNAL_STREAM": stream_id(journal)},
        )
        try:
            deadline = time.monotonic() + 30
            while "the uplink failed" not in journal.read_text():
                assert time.monotonic() < deadline, journal.read_text()
                assert process.poll() is None, journal.read_text()
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    lines = journal.read_text().splitlines()
    started = next(line for line in lines if "fieldgate running" in line)
    assert started.startswith("<6>gateway.service: fieldgate running: 1 device(s) on this-box")
    assert "broker 127.0.0.1:9" in started
    assert "0 reading(s) waiting" in started
    assert any(line.startswith("<4>gateway.health: the uplink failed") for line in lines), lines
    assert all(line.startswith("<") for line in lines), lines
