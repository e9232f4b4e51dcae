"""A buffer file the gateway's user cannot read at start (created by root, the service running
as its own user), tried on the whole gateway run as an unprivileged user (nobody) against the
simulated meters and Mosquitto. Where the directory is the service's own, the file is moved
aside untouched (root can still export it) and a fresh one started, as for a damaged file.
Where it cannot be moved either, the gateway says why in one line, keeps running with the
readings in memory, and carries on with the old file, nothing lost, once its owner is mended."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

from gateway.buffer import ReadingStore
from gateway.readings import PointValue, Reading
from tests.harness import REPO, GatewayProcess, gateway_yaml, reading_seqs
from tests.test_delivery import FAST_METERS, lan

NOBODY = 65534
EVENTS = "fieldgate/gw-test/events"


class UnprivilegedGateway(GatewayProcess):
    """``fieldgate run`` as uid/gid nobody, with no supplementary groups."""

    def start(self) -> None:
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*as_nobody, sys.executable, "-m", "gateway", "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            )


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory nobody can reach (pytest's tmp_path is private to root): holds the config,
    and the buffer's directory, whose owner each test sets."""
    path = Path(tempfile.mkdtemp(prefix="fieldgate-unprivileged-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def root_only_buffer(path: Path) -> None:
    """A healthy buffer with five readings waiting, owned by root and readable by root only."""
    store = ReadingStore(path, max_size=10**9, max_age_s=1e12)
    for number in range(1, 6):
        store.append(Reading("m1", 1_764_072_000_000 + number, (PointValue("v", 1.0, "V"),)))
    store.close()
    path.chmod(0o600)


def start_as_nobody(
    gateways: list[GatewayProcess], open_dir: Path, tmp_path: Path, config: str
) -> GatewayProcess:
    config_path = open_dir / "fieldgate.yaml"
    config_path.write_text(config)
    config_path.chmod(0o644)
    gateway = UnprivilegedGateway(config_path, tmp_path / "gateway.log")
    gateway.start()
    gateways.append(gateway)
    return gateway


def event_documents(fleet: FleetSubscriber) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in fleet.messages(lambda t: t == EVENTS)]


def kinds(fleet: FleetSubscriber) -> list[object]:
    return [e["event"] for e in event_documents(fleet)]


def test_an_unreadable_buffer_file_is_moved_aside_untouched_and_a_fresh_one_started(
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    open_dir: Path,
):
    state = open_dir / "state"  # the service's own directory, as /var/lib/fieldgate is
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    buffer_path = state / "buffer.db"
    root_only_buffer(buffer_path)
    with start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter:
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        gateway = start_as_nobody(gateways, open_dir, tmp_path, config)
        assert fleet.wait_for(lambda f: "buffer_replaced" in kinds(f), 30), gateway.log()
        assert fleet.wait_for(lambda f: len(f.readings()) >= 5, 30), gateway.log()
        assert gateway.stop() == 0
    (replaced,) = [e for e in event_documents(fleet) if e["event"] == "buffer_replaced"]
    detail = str(replaced["detail"])
    assert f"belongs to uid 0 with mode 600; fieldgate runs as uid {NOBODY}" in detail, detail
    (aside,) = [p for p in state.iterdir() if p.name.startswith("buffer.db.damaged-")]
    assert detail.endswith(aside.name)
    # Moved, not changed: root can still read (and export) the five readings.
    with contextlib.closing(sqlite3.connect(aside)) as db:
        assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 5
    # The fresh file is the service's own, and its numbers are beyond any the old one gave.
    assert buffer_path.stat().st_uid == NOBODY
    assert min(reading_seqs(fleet.readings())) > 10**15
    assert "Traceback" not in gateway.log()


def test_an_unreadable_buffer_file_that_cannot_be_moved_is_reported_and_kept(
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    open_dir: Path,
):
    state = open_dir / "state"  # root's, mode 755: the service cannot rename in it
    state.mkdir()
    buffer_path = state / "buffer.db"
    root_only_buffer(buffer_path)
    with start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter:
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        gateway = start_as_nobody(gateways, open_dir, tmp_path, config)
        assert fleet.wait_for(lambda f: "buffer_failing" in kinds(f), 30), gateway.log()
        assert gateway.wait_for_log("storing readings in the buffer failed", 10), gateway.log()
        assert gateway.process is not None
        assert gateway.process.poll() is None
        # What a technician does after reading the line: give the service its files back.
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(state)], check=True)
        assert fleet.wait_for(lambda f: "buffer_recovered" in kinds(f), 60), gateway.log()
        # The five readings that waited in the old file go out, and the new ones after them.
        assert fleet.wait_for(lambda f: set(range(1, 16)) <= set(reading_seqs(f.readings())), 60)
        assert gateway.stop() == 0
    log = gateway.log()
    line = next(x for x in log.splitlines() if "storing readings in the buffer failed" in x)
    assert f"belongs to uid 0 with mode 600; fieldgate runs as uid {NOBODY}" in line, line
    assert f"cannot be moved aside either (Permission denied: {state} is not writable" in line
    assert log.count("storing readings in the buffer failed") == 1, log
    assert not [p for p in state.iterdir() if ".damaged-" in p.name]
    assert "Traceback" not in log
