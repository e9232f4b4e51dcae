"""The buffer's bad days, tried on the whole gateway as a child process against Mosquitto and
the simulated meters: a garbage file or a directory at the buffer's path, a database locked by
another process, the buffer's filesystem full (a real tmpfs the test mounts). Each time the
gateway keeps running, reports the condition upstream as an event, and loses no numbered
reading; and `fieldgate buffer` shows and exports what waits while the daemon runs."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

from tests.harness import (
    REPO,
    GatewayProcess,
    gateway_yaml,
    start_gateway,
    wait_until,
)
from tests.test_buffer import fill
from tests.test_delivery import FAST_METERS, delivered_or_kept, lan, newest_seq_stored

EVENTS = "fieldgate/gw-test/events"


def events(fleet: FleetSubscriber) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in fleet.messages(lambda t: t == EVENTS)]


def event_kinds(fleet: FleetSubscriber) -> list[object]:
    return [e["event"] for e in events(fleet)]


def spoil_with_garbage(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 not a database at all" * 50)


def spoil_with_directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    "spoil", [spoil_with_garbage, spoil_with_directory], ids=["garbage", "directory"]
)
def test_an_unusable_buffer_file_is_moved_aside_reported_and_the_gateway_runs(
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    spoil: Callable[[Path], None],
):
    buffer_path = tmp_path / "buffer.db"
    spoil(buffer_path)
    with start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter:
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        gateway = start_gateway(gateways, tmp_path, config)
        assert fleet.wait_for(lambda f: "buffer_replaced" in event_kinds(f), 30), gateway.log()
        assert fleet.wait_for(lambda f: len(f.readings()) >= 5, 30), gateway.log()
        assert gateway.stop() == 0
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith("buffer.db.damaged-")]
    assert aside, list(tmp_path.iterdir())
    (replaced,) = [e for e in events(fleet) if e["event"] == "buffer_replaced"]
    assert str(replaced["detail"]).endswith(aside[0])
    assert "was unusable" in gateway.log()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process holds the buffer's write lock (a technician's sqlite3 shell left in a
    transaction)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "db.execute('BEGIN IMMEDIATE'); print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


@contextlib.contextmanager
def full(path: Path) -> Iterator[None]:
    filler = fill(path.parent)
    try:
        yield
    finally:
        filler.unlink()


@pytest.mark.parametrize("condition", ["locked", "full"])
def test_a_failing_disk_is_survived_reported_and_nothing_numbered_is_lost(
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    condition: str,
):
    with contextlib.ExitStack() as stack:
        where = (
            stack.enter_context(mounted_tmpfs(tmp_path / "small", "2m"))
            if condition == "full"
            else tmp_path
        )
        buffer_path = where / "buffer.db"
        meter = stack.enter_context(start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]))
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        gateway = start_gateway(gateways, tmp_path, config)
        assert fleet.wait_for(lambda f: len(f.readings()) >= 5, 30), gateway.log()
        failing = locked(buffer_path) if condition == "locked" else full(buffer_path)
        with failing:
            assert fleet.wait_for(lambda f: "buffer_failing" in event_kinds(f), 60), gateway.log()
            # Readings keep coming from the meters and wait in memory meanwhile.
            assert gateway.wait_for_log("storing readings in the buffer failed", 10)
        assert fleet.wait_for(lambda f: "buffer_recovered" in event_kinds(f), 60), gateway.log()
        made = newest_seq_stored(buffer_path)
        assert wait_until(lambda: newest_seq_stored(buffer_path) > made + 3, 30)
        assert gateway.stop() == 0
        delivered_or_kept(buffer_path, fleet)
    log = gateway.log()
    assert log.count("storing readings in the buffer failed") == 1, log
    assert log.count("storing readings in the buffer works again") == 1, log
    assert "Traceback" not in log
    (recovered,) = [e for e in events(fleet) if e["event"] == "buffer_recovered"]
    assert "held in memory written, 0 dropped" in str(recovered["detail"])


def test_a_read_only_buffer_directory_at_start_is_survived_and_writing_begins(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    with (
        mounted_tmpfs(tmp_path / "small", "2m") as where,
        start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter,
    ):
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        buffer_path = where / "buffer.db"
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        gateway = start_gateway(gateways, tmp_path, config)
        assert fleet.wait_for(lambda f: "buffer_failing" in event_kinds(f), 60), gateway.log()
        assert gateway.process is not None
        assert gateway.process.poll() is None
        subprocess.run(["mount", "-o", "remount,rw", str(where)], check=True)
        assert fleet.wait_for(lambda f: "buffer_recovered" in event_kinds(f), 60), gateway.log()
        assert fleet.wait_for(lambda f: len(f.readings()) >= 5, 30), gateway.log()
        assert gateway.stop() == 0
        delivered_or_kept(buffer_path, fleet)
    assert "is not writable" in gateway.log()


def numbered(path: Path) -> int:
    """The newest number given, 0 until the gateway has made its file."""
    if not path.exists():
        return 0  # connecting would create it, empty, before the gateway does
    try:
        return newest_seq_stored(path)
    except sqlite3.Error:
        return 0


def fieldgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=60,
        check=False,
    )


def test_buffer_command_reports_and_exports_while_the_daemon_runs(
    broker: MosquittoBroker, gateways: list[GatewayProcess], tmp_path: Path
):
    buffer_path = tmp_path / "buffer.db"
    broker.stop()  # readings wait
    with start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter:
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        gateway = start_gateway(gateways, tmp_path, config)
        assert wait_until(lambda: numbered(buffer_path) >= 20, 60), gateway.log()
        shown = fieldgate("buffer", "-c", str(gateway.config_path))
        assert shown.returncode == 0, shown.stderr
        assert "reading(s) waiting" in shown.stdout
        assert {"m1", "m2"} <= {line.split()[0] for line in shown.stdout.splitlines() if line}
        exported = fieldgate("buffer", "-c", str(gateway.config_path), "export", "--device", "m2")
        as_csv = fieldgate(
            "buffer", "export", "--file", str(buffer_path), "--format", "csv", "--device", "m1"
        )
        assert gateway.process is not None
        assert gateway.process.poll() is None, "the daemon must keep running"
        assert gateway.stop() == 0
    assert exported.returncode == 0, exported.stderr
    documents = [json.loads(line) for line in exported.stdout.splitlines()]
    assert documents
    assert {d["device"] for d in documents} == {"m2"}
    assert [d["seq"] for d in documents] == sorted(d["seq"] for d in documents)
    assert set(documents[0]["values"]) == {"frequency"}
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {row["point"] for row in table} == {"voltage_l1", "import_energy"}
    assert {row["device"] for row in table} == {"m1"}
    # What was exported was waiting in the buffer then.
    with contextlib.closing(sqlite3.connect(buffer_path)) as db:
        m2 = {row[0] for row in db.execute("SELECT seq FROM readings WHERE device = 'm2'")}
    assert {d["seq"] for d in documents} <= m2
