"""Broker outages tried on the whole gateway as a child process against the simulated meters and
Mosquitto: down for a minute (`make trials`; `make test` has the 10 s one in test_delivery.py),
down for longer than the buffer's `max_age`, and restarted with persistence off. Nothing is
missing that the bounds did not drop, and every drop reaches the fleet as an event whose ranges
cover exactly the missing numbers."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import Sdm630Meter, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker

from tests.harness import GatewayProcess, gateway_yaml, reading_seqs, start_gateway, wait_until
from tests.test_delivery import FAST_METERS, lan, newest_seq_stored
from tests.wire import CheckedFleet

EVENTS = "fieldgate/gw-test/events"

#: Four meters every 100 ms: the buffer checks its limits every 256 readings, so this many
#: readings a second make the age limit act a few times within a short outage.
BUSY_METERS = "".join(
    f"""\
- name: m{unit}
  bus: lan
  unit_id: {unit}
  interval: 100ms
  points:
    - {{name: voltage_l1, register: input, address: 0, type: f32, unit: V}}
"""
    for unit in range(1, 5)
)


def waiting_seqs(path: Path) -> set[int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT seq FROM readings")}


def events_waiting(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
        return count


def dropped_counted(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0


def drop_events(*fleets: FleetSubscriber) -> list[dict[str, object]]:
    found: dict[object, dict[str, object]] = {}
    for fleet in fleets:
        for message in fleet.messages(lambda t: t == EVENTS):
            document = json.loads(message.payload)
            if document["event"] == "dropped":
                found[document["id"]] = document  # a resent event has its stored id
    return list(found.values())


def received(*fleets: FleetSubscriber) -> set[int]:
    return {seq for fleet in fleets for seq in reading_seqs(fleet.readings())}


def assert_only_reported_drops_missing(
    buffer_path: Path, fleets: tuple[FleetSubscriber, ...], *, drops_expected: bool
) -> None:
    """After the gateway stopped: every number it gave is at the fleet, still waiting in the
    buffer, or named by a drop event; the events' counts add up to what the buffer counted."""
    through = newest_seq_stored(buffer_path)
    waiting = waiting_seqs(buffer_path)
    # Drops do not come back: once nothing more can be missing, the fleet has all it will get.
    events = drop_events(*fleets)
    named: set[int] = set()
    for event in events:
        first, last = event["seq_first"], event["seq_last"]
        assert isinstance(first, int)
        assert isinstance(last, int)
        named |= set(range(first, last + 1))
    expected = set(range(1, through + 1)) - waiting - named
    assert wait_until(lambda: expected <= received(*fleets), 30), sorted(
        expected - received(*fleets)
    )[:20]
    missing = set(range(1, through + 1)) - waiting - received(*fleets)
    assert missing <= named, sorted(missing - named)[:20]
    counted = 0
    for event in events:
        count = event["count"]
        assert isinstance(count, int)
        counted += count
    assert counted == dropped_counted(buffer_path), "a drop without its event"
    if not drops_expected:
        assert not events
        assert not missing
        return
    assert events
    assert {event["reason"] for event in events} == {"max_age"}
    # The ranges name exactly the missing numbers: each number counted as dropped is missing,
    # except one the broker took without its PUBACK reaching the gateway before the outage
    # (the row stayed, then aged out): at most a window of messages in flight.
    assert len(missing) <= counted <= len(missing) + 20, (len(missing), counted)


def outage(
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    gateways: list[GatewayProcess],
    tmp_path: Path,
    *,
    down_for: float,
    max_age: str | None = None,
) -> None:
    buffer_path = tmp_path / "buffer.db"
    units = range(1, 5) if max_age else range(1, 3)
    with start_in_thread([Sdm630Meter(unit) for unit in units]) as meter:
        devices = BUSY_METERS if max_age else FAST_METERS
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), devices)
        if max_age:
            config = config.replace(
                f"  path: {buffer_path}\n", f"  path: {buffer_path}\n  max_age: {max_age}\n"
            )
        gateway = start_gateway(gateways, tmp_path, config)
        assert fleet.wait_for(lambda f: len(f.readings()) >= 5, 30), gateway.log()
        broker.stop()
        made_before = newest_seq_stored(buffer_path)
        # Counted, not timed: readings made during the outage, however slow the box.
        assert wait_until(lambda: newest_seq_stored(buffer_path) >= made_before + 20, 60)
        time.sleep(down_for)  # the outage itself: the scenario, not a measurement
        made_until = newest_seq_stored(buffer_path)
        broker.start()
        assert gateway.wait_for_log("reachable again", 30), gateway.log()
        # Live readings made after the outage arrive, and every event has left the buffer.
        assert fleet.wait_for(
            lambda f: max(reading_seqs(f.readings()), default=0) > made_until + 10, 30
        )
        assert wait_until(lambda: events_waiting(buffer_path) == 0, 30)
        assert gateway.stop() == 0
    assert_only_reported_drops_missing(buffer_path, (fleet,), drops_expected=bool(max_age))
    log = gateway.log()
    assert log.count("reachable again") == 1, log
    assert "Traceback" not in log


def test_broker_down_longer_than_max_age_drops_only_what_aged_and_reports_it(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    outage(broker, fleet, gateways, tmp_path, down_for=10, max_age="5s")


@pytest.mark.slow
def test_broker_down_for_a_minute_loses_nothing(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    outage(broker, fleet, gateways, tmp_path, down_for=60)


@pytest.mark.slow
def test_broker_down_for_a_minute_beyond_max_age_reports_every_drop(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    outage(broker, fleet, gateways, tmp_path, down_for=60, max_age="5s")


@contextlib.contextmanager
def paused(gateway: GatewayProcess) -> Iterator[None]:
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        gateway.process.send_signal(signal.SIGCONT)


def test_broker_restarted_without_persistence_loses_nothing(
    gateways: list[GatewayProcess], tmp_path: Path
):
    buffer_path = tmp_path / "buffer.db"
    with (
        MosquittoBroker(persistence=False) as broker,
        CheckedFleet(broker.port) as before,
        start_in_thread([Sdm630Meter(1), Sdm630Meter(2)]) as meter,
    ):
        config = gateway_yaml(broker.port, buffer_path, lan(meter.port), FAST_METERS)
        gateway = start_gateway(gateways, tmp_path, config)
        assert before.wait_for(lambda f: len(f.readings()) >= 20, 30), gateway.log()
        # Stopped mid-stream: what was in flight dies with the broker's memory.
        broker.stop()
        made_before = newest_seq_stored(buffer_path)
        assert wait_until(lambda: newest_seq_stored(buffer_path) >= made_before + 10, 60)
        # The gateway is held while the broker comes back and the fleet subscribes again: a
        # broker without persistence forgets subscriptions, and what it acknowledges before
        # a subscriber is there is gone at the broker, whatever the gateway does.
        with paused(gateway):
            broker.start()
            after = CheckedFleet(broker.port)
            after.start()
        try:
            assert gateway.wait_for_log("reachable again", 30), gateway.log()
            made_until = newest_seq_stored(buffer_path)
            assert after.wait_for(
                lambda f: max(reading_seqs(f.readings()), default=0) > made_until, 30
            )
            assert gateway.stop() == 0
            assert_only_reported_drops_missing(buffer_path, (before, after), drops_expected=False)
        finally:
            after.stop()
    assert waiting_seqs(buffer_path) == set()
