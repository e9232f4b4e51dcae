"""Nothing buffered is lost: through a broker outage and through SIGKILL of the gateway, every
sequence number arrives at the fleet side, in order (duplicates allowed: QoS 1 is at least once).
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

from tests.harness import (
    GatewayProcess,
    buffered,
    gateway_yaml,
    nothing_lost,
    reading_seqs,
    start_gateway,
    wait_until,
)
from tests.wire import CheckedFleet

FAST_METERS = """\
- name: m1
  bus: lan
  interval: 200ms
  max_gap: 80
  points:
    - {name: voltage_l1, register: input, address: 0, type: f32, unit: V}
    - {name: import_energy, register: input, address: 0x48, type: f32, unit: kWh}
- name: m2
  bus: lan
  unit_id: 2
  interval: 500ms
  points:
    - {name: frequency, register: input, address: 0x46, type: f32, unit: Hz}
"""


def lan(port: int) -> str:
    return f"- name: lan\n  type: modbus_tcp\n  host: 127.0.0.1\n  port: {port}\n"


def assert_complete_and_ordered(readings: list[dict[str, object]], through: int) -> None:
    """Every number 1..through arrived; the first arrival of each is in increasing order within
    live readings and within the backlog (marked historical), which drains behind the live."""
    seqs = reading_seqs(readings)
    first: dict[int, bool] = {}
    for seq, reading in zip(seqs, readings, strict=True):
        first.setdefault(seq, bool(reading.get("historical", False)))
    for historical in (False, True):
        arrivals = [seq for seq, flag in first.items() if flag is historical]
        assert arrivals == sorted(arrivals), f"out of order (historical={historical})"
    missing = sorted(set(range(1, through + 1)) - set(seqs))
    assert not missing, f"lost sequence numbers: {missing[:20]} ({len(missing)} in all)"


def buffered_count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        return count


def newest_seq_stored(path: Path) -> int:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
        return int(row[0]) if row else 0


def delivered_or_kept(buffer_path: Path, fleet: FleetSubscriber) -> int:
    """After a clean stop: every number given is at the fleet, in order, or still waits in the
    buffer. The pollers' last readings go before the goodbye when the broker acknowledges
    them in time (see the test of that below); those it did not (a backlog, the broker down)
    stay in SQLite for the next start (PRODUCT: what was not published stays), never a gap.
    Returns the newest number given."""
    nothing_lost(buffer_path, fleet)
    waiting, through = buffered(buffer_path)
    assert len(waiting) <= 10, f"the stop left more than its last moment: {sorted(waiting)}"
    assert_complete_and_ordered(fleet.readings(), min(waiting, default=through + 1) - 1)
    return through


def test_broker_down_for_ten_seconds_loses_nothing(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    with start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter:
        buffer_path = tmp_path / "buffer.db"
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        gateway = start_gateway(gateways, tmp_path, config)
        assert fleet.wait_for(lambda f: len(f.readings()) >= 5, timeout=20), gateway.log()

        broker.stop()
        made_before = newest_seq_stored(buffer_path)
        # Counted, not timed: wait for readings made during the outage, however slow the box.
        assert wait_until(lambda: newest_seq_stored(buffer_path) >= made_before + 20, 60)
        time.sleep(10)  # an outage long enough for keepalives and reconnect attempts to fail
        made_until = newest_seq_stored(buffer_path)
        stored_while_down = buffered_count(buffer_path)
        broker.start()

        assert gateway.wait_for_log("reachable again", timeout=20), gateway.log()
        # Counted, not timed: the backlog has drained when the buffer is empty, however long
        # a loaded box takes (a fixed second was a flake under load).
        assert wait_until(lambda: buffered_count(buffer_path) == 0, 60), gateway.log()
        assert gateway.stop() == 0
        delivered_or_kept(buffer_path, fleet)

    # The buffer held every reading made during the outage, and then let them all go.
    assert stored_while_down >= made_until - made_before
    log = gateway.log()
    assert log.count("unavailable") == 1, log
    assert log.count("reachable again") == 1, log


def kill_and_restart_cycles(
    cycles: int,
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
) -> int:
    """Kill -9 at random moments (mid-poll, mid-commit, mid-publish), half of them with the
    broker down; returns how many duplicates the fleet received (at least once)."""
    rng = random.Random(20261125)
    with start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter:
        buffer_path = tmp_path / "buffer.db"
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        for cycle in range(cycles):
            # Every other cycle the broker is down, so the kill hits a full buffer.
            broker_down = cycle % 2 == 1
            if broker_down:
                broker.stop()
            gateway = start_gateway(gateways, tmp_path, config)
            assert gateway.wait_for_log("fieldgate running", timeout=20), gateway.log()
            time.sleep(rng.uniform(0.3, 1.5))
            if broker_down:
                assert wait_until(lambda: buffered_count(buffer_path) > 0, timeout=10)
            gateway.kill()
            if broker_down:
                broker.start()
        gateway = start_gateway(gateways, tmp_path, config)
        assert gateway.wait_for_log("fieldgate running", timeout=20)
        # Counted, not timed: the backlog of the kills has drained when the buffer is empty.
        assert wait_until(lambda: buffered_count(buffer_path) == 0, 60), gateway.log()
        assert gateway.stop() == 0
    assert delivered_or_kept(buffer_path, fleet) > cycles
    seqs = reading_seqs(fleet.readings())
    return len(seqs) - len(set(seqs))


def report_duplicates(capsys: pytest.CaptureFixture[str], cycles: int, duplicates: int) -> None:
    with capsys.disabled():
        print(f"\n{cycles} x kill -9: nothing lost, {duplicates} duplicate(s) at the fleet")


def test_thirty_sigkills_lose_nothing(
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    duplicates = kill_and_restart_cycles(30, broker, fleet, gateways, tmp_path)
    report_duplicates(capsys, 30, duplicates)


@pytest.mark.slow
def test_one_hundred_sigkills_lose_nothing(
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    duplicates = kill_and_restart_cycles(100, broker, fleet, gateways, tmp_path)
    report_duplicates(capsys, 100, duplicates)


def test_status_is_retained_online_then_offline(
    broker: MosquittoBroker, gateways: list[GatewayProcess], tmp_path: Path
):
    with start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter:
        config = gateway_yaml(
            broker.port, tmp_path / "b.db", lan(meter.port), FAST_METERS, keepalive="1s"
        )
        gateway = start_gateway(gateways, tmp_path, config)
        status = "fieldgate/gw-test/status"

        def latest_status(subscriber: FleetSubscriber) -> str | None:
            found = subscriber.messages(lambda t: t == status)
            return found[-1].json()["state"] if found else None

        with CheckedFleet(broker.port, topic=status) as watcher:
            assert watcher.wait_for(lambda w: latest_status(w) == "online", timeout=20)
        # Killed without a goodbye: the broker publishes the last will.
        with CheckedFleet(broker.port, topic=status) as watcher:
            gateway.kill()
            assert watcher.wait_for(lambda w: latest_status(w) == "offline", timeout=10)
        # Retained: a subscriber arriving later still sees the state.
        gateway = start_gateway(gateways, tmp_path, config)
        with CheckedFleet(broker.port, topic=status) as watcher:
            assert watcher.wait_for(lambda w: latest_status(w) == "online", timeout=20)
            assert gateway.stop() == 0
            assert watcher.wait_for(lambda w: latest_status(w) == "offline", timeout=10)
        with CheckedFleet(broker.port, topic=status) as late:
            assert late.wait_for(lambda w: latest_status(w) == "offline", timeout=5)
            assert late.messages()[-1].retain


def test_a_clean_stop_sends_the_pollers_last_readings_before_its_goodbye(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    with start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter:
        buffer_path = tmp_path / "buffer.db"
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        # Groups that wait a second to be committed: the stop always comes with one open,
        # whose readings are committed only after the pollers stopped.
        config = config.replace(f"{buffer_path}\n", f"{buffer_path}\n  commit_delay: 1s\n")
        gateway = start_gateway(gateways, tmp_path, config)
        assert fleet.wait_for(lambda f: len(f.readings()) >= 10, timeout=30), gateway.log()
        # Into the next group's second, the pollers' next readings waiting in it (the claims
        # below hold wherever the stop falls; this only makes it fall where they are tested).
        time.sleep(0.5)
        assert gateway.stop() == 0
    # Whatever the pollers stored in the moment of the stop was sent and acknowledged before
    # the goodbye: nothing waits for the next start.
    through = newest_seq_stored(buffer_path)
    assert buffered_count(buffer_path) == 0, gateway.log()
    assert fleet.wait_for(
        lambda f: set(range(1, through + 1)) <= set(reading_seqs(f.readings())), 10
    )
    assert_complete_and_ordered(fleet.readings(), through)
    arrivals = fleet.messages(lambda topic: topic.endswith(("/status", "/reading")))
    assert arrivals[-1].topic.endswith("/status")
    assert arrivals[-1].json()["state"] == "offline"
