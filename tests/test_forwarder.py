"""The forwarder against a real broker and a real buffer: everything delivered in order and
deleted only after PUBACK, through a broker outage; a locked buffer and an undecodable row are
reported once and retried, never the end of the task, and nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.mosquitto import MosquittoBroker

from gateway.buffer import Buffer, BufferStats, ReadingStore
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.config.model import MqttConfig
from gateway.errors import StorageDeferred
from gateway.events import EventKind
from gateway.health import PartHealth
from gateway.readings import PointValue, Quality, Reading
from gateway.upstream.forwarder import Forwarder
from tests.harness import held_write_lock, run_fieldgate
from tests.wire import dialect as wire_dialect

#: Liveness bound for waits; generous, never a claim about speed.
PATIENCE = 60.0
STATUS = "fieldgate/gw-f/status"


def reading(number: int) -> Reading:
    device = "m1" if number % 3 else "m2"
    return Reading(device, 1_764_072_000_000 + number, (PointValue("v", float(number), "V"),))


async def eventually(condition: Callable[[], bool], timeout: float = PATIENCE) -> None:
    async with asyncio.timeout(timeout):
        # Polled: the state lives in other threads and processes (fleet, SQLite, broker).
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def rows_waiting(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        count: int = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        return count


def seqs_received(fleet: FleetSubscriber) -> list[int]:
    return [document["seq"] for document in fleet.readings()]


def assert_complete_and_ordered(seqs: list[int], through: int) -> None:
    first_arrivals = list(dict.fromkeys(seqs))
    assert first_arrivals == list(range(1, through + 1))


class Parts:
    def __init__(self, broker: MosquittoBroker, buffer: Buffer, path: Path) -> None:
        self.path = path
        self.buffer = buffer
        self.uplink = PartHealth("the uplink", "readings stay buffered")
        self.storage = PartHealth("the buffer", "readings are not deleted or sent")
        config = settings_of(
            MqttConfig(
                host=broker.host, port=broker.port, keepalive=5, max_inflight=20, reconnect_max=0.5
            )
        )
        self.forwarder = Forwarder(
            config,
            wire_dialect("fieldgate", "gw-f"),
            buffer,
            SystemClock(),
            self.uplink,
            self.storage,
            gateway_id="gw-f",
        )

    async def append(self, first: int, last: int) -> None:
        for number in range(first, last + 1):
            assert await self.buffer.append(reading(number)) == number


@pytest.fixture
async def parts(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Parts]:
    path = tmp_path / "buffer.db"
    buffer = await Buffer.open(path, max_size=10**9, max_age_s=1e9)
    try:
        yield Parts(broker, buffer, path)
    finally:
        await buffer.close()


@contextlib.asynccontextmanager
async def running(forwarder: Forwarder) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(forwarder.run(), name="forwarder under test")
    try:
        yield task
        assert not task.done(), "the forwarder's task ended on its own"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def records(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


async def test_delivers_in_order_and_deletes_only_after_puback(
    parts: Parts,
    broker: MosquittoBroker,
    fleet: FleetSubscriber,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    await parts.forwarder.say_goodbye(timeout=1)  # not connected: nothing to do
    await parts.append(1, 300)
    broker.stop()
    async with running(parts.forwarder) as task:
        await eventually(lambda: parts.uplink.failures >= 3)
        assert rows_waiting(parts.path) == 300  # no PUBACK, no delete
        broker.start()
        await eventually(lambda: rows_waiting(parts.path) == 0)
        await eventually(lambda: set(range(1, 301)) <= set(seqs_received(fleet)))
        # Later readings go out as they arrive.
        await parts.append(301, 350)
        await eventually(lambda: rows_waiting(parts.path) == 0)
        await eventually(lambda: set(range(1, 351)) <= set(seqs_received(fleet)))
        assert parts.uplink.up is True
        assert not task.done()

        statuses = fleet.messages(lambda t: t == STATUS)
        await parts.forwarder.say_goodbye(timeout=PATIENCE)
        await eventually(
            lambda: fleet.messages(lambda t: t == STATUS)[-1].json()["state"] == "offline"
        )
    assert statuses[-1].json()["state"] == "online"

    assert_complete_and_ordered(seqs_received(fleet), 350)
    first = fleet.readings()[0]
    assert first == {
        "schema": 2,
        "gateway": "gw-f",
        "device": "m1",
        "seq": 1,
        "ts": "2025-11-25T12:00:00.001Z",
        "quality": "good",
        "layout": fleet.description(first)["layout"],
        "values": [1.0],
        # Stored before the session began: the backlog, sent marked historical.
        "historical": True,
    }
    assert fleet.description(first)["points"] == [{"name": "v", "unit": "V"}]
    assert records(caplog, "unavailable") == 1
    assert records(caplog, "reachable again") == 1


async def test_locked_buffer_is_reported_once_and_nothing_is_lost(
    parts: Parts,
    fleet: FleetSubscriber,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.INFO)
    await parts.append(1, 100)
    with held_write_lock(parts.path) as release:
        async with running(parts.forwarder) as task:
            # The first window goes out (reading needs no write lock); its delete fails and is
            # retried, and nothing more is sent until the acknowledged rows are deleted.
            await eventually(lambda: len(seqs_received(fleet)) > 0)
            await eventually(lambda: parts.storage.failures >= 2)
            assert "database is locked" in (parts.storage.last_error or "")
            assert rows_waiting(parts.path) == 100
            assert not task.done()

            release()
            await eventually(lambda: rows_waiting(parts.path) == 0)
            assert parts.storage.up is True
            await parts.append(101, 120)
            await eventually(lambda: rows_waiting(parts.path) == 0)
            await eventually(lambda: set(range(1, 121)) <= set(seqs_received(fleet)))

    # Acknowledged rows waited for their delete; none was sent twice.
    assert seqs_received(fleet) == list(range(1, 121))
    assert records(caplog, "the buffer failed") == 1
    assert records(caplog, "the buffer works again") == 1


async def test_a_failing_disk_is_reported_upstream_while_deletes_wait_for_it(
    parts: Parts, fleet: FleetSubscriber
):
    await parts.append(1, 20)
    with held_write_lock(parts.path):
        async with running(parts.forwarder):
            # The first window goes out; its delete fails and is retried, and no reading goes
            # until it succeeds (what waits in memory stays bounded)...
            await eventually(lambda: len(seqs_received(fleet)) > 0)
            await eventually(lambda: parts.storage.failures >= 1)
            with pytest.raises(StorageDeferred):
                await parts.buffer.append(reading(21))
            # ...but the buffer's condition is held in memory, needs no disk, and goes.
            await eventually(
                lambda: (
                    "buffer_failing"
                    in [json.loads(m.payload)["event"] for m in fleet.messages(is_event)]
                )
            )
            assert rows_waiting(parts.path) == 20


def is_event(topic: str) -> bool:
    return topic == "fieldgate/gw-f/events"


def insert_broken(path: Path, device: str, quality: str, point_values: str) -> int:
    """A row written straight into the file, as damage or another version would leave it."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        seq = db.execute(
            "INSERT INTO readings (device, read_at_ms, quality, point_values) "
            "VALUES (?, 1764072000000, ?, ?)",
            (device, quality, point_values),
        ).lastrowid
    assert isinstance(seq, int)
    return seq


def quarantined_rows(path: Path) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT seq, error FROM quarantine ORDER BY seq").fetchall()


async def test_undecodable_rows_are_quarantined_reported_and_the_rest_delivered(
    parts: Parts, fleet: FleetSubscriber, caplog: pytest.LogCaptureFixture
):
    await parts.append(1, 5)
    assert insert_broken(parts.path, "m1", "good", "{not json") == 6
    for number in range(7, 11):
        assert await parts.buffer.append(reading(number)) == number
    assert insert_broken(parts.path, "m2", "excellent", '[["v", 1.0, "V"]]') == 11
    async with running(parts.forwarder):
        # The backlog (1..11) with two broken rows in it; then live rows with a third.
        await eventually(lambda: set(range(1, 11)) - {6} <= set(seqs_received(fleet)))
        for number in range(12, 16):
            assert await parts.buffer.append(reading(number)) == number
        assert insert_broken(parts.path, "m1", "good", '[["v", true, "V"]]') == 16
        for number in range(17, 21):
            assert await parts.buffer.append(reading(number)) == number
        await eventually(lambda: set(range(1, 21)) - {6, 11, 16} <= set(seqs_received(fleet)))
        await eventually(lambda: rows_waiting(parts.path) == 0)
        await eventually(lambda: events_waiting(parts.path) == 0)
    assert not {6, 11, 16} & set(seqs_received(fleet))
    events = [json.loads(m.payload) for m in fleet.messages(lambda t: t == "fieldgate/gw-f/events")]
    named = sorted((e["seq_first"], e["seq_last"]) for e in events if e["event"] == "quarantined")
    assert named == [(6, 6), (11, 11), (16, 16)]
    assert all("quarantine table" in e["detail"] for e in events)
    # Kept for a technician, with the reason; counted; reported once each, not a failure.
    kept = quarantined_rows(parts.path)
    assert [seq for seq, _ in kept] == [6, 11, 16]
    assert "Expecting property" in kept[0][1]
    assert (await parts.buffer.stats()).quarantined == 3
    assert parts.storage.incidents == 3
    assert parts.storage.up is not False
    for seq in (6, 11, 16):
        assert records(caplog, f"seq {seq} was quarantined") == 1
    # A technician sees them, with the reason, in `fieldgate buffer`.
    shown = run_fieldgate("buffer", "--file", str(parts.path))
    assert shown.returncode == 0, shown.stderr
    assert "quarantined (no longer decode" in shown.stdout
    assert "11   m2      buffered reading seq 11 does not decode" in shown.stdout, shown.stdout


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"point_values": "{not json"}, "Expecting property name"),
        ({"point_values": '{"v": 1}'}, "not a list"),
        ({"point_values": "[1, 2]"}, "not a list of 1 values"),
        ({"point_values": "[true]"}, "True is not a number, text or null"),
        ({"point_values": '[["v"]]'}, "is not a number, text or null"),
        ({"point_values": b"[1.5]"}, "are not text"),
        ({"layout": 999}, "its layout 999 is not in the layouts table"),
        ({"layout": "one"}, "layout 'one' is not a number"),
        # Rows as files written before layouts hold them: [name, value, unit] triples.
        ({"layout": None, "point_values": '[["v", 1]]'}, "triple"),
        ({"layout": None, "point_values": '[["v", true, "V"]]'}, "triple"),
        ({"layout": None, "point_values": '[[1, 2, "V"]]'}, "triple"),
        ({"quality": "excellent"}, "'excellent' is not a valid Quality"),
        ({"read_at_ms": "yesterday"}, "wrong type"),
    ],
)
def test_a_row_that_does_not_decode_is_quarantined_with_its_reason(
    tmp_path: Path, changes: dict[str, object], complaint: str
):
    store = ReadingStore(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    try:
        store.append(reading(1))
        store.append(Reading("m1", 5, (PointValue("v", None, None),), Quality.PARTIAL))
        store.append(reading(3))
        with contextlib.closing(sqlite3.connect(tmp_path / "b.db", isolation_level=None)) as db:
            assignments = ", ".join(f"{column} = ?" for column in changes)
            db.execute(f"UPDATE readings SET {assignments} WHERE seq = 2", (*changes.values(),))
        # The limit is filled from behind the bad row: fewer would mean "no more rows".
        assert [r.seq for r in store.oldest(0, 2)] == [1, 3]
        ((seq, error),) = quarantined_rows(tmp_path / "b.db")
        assert seq == 2
        assert re.search(f"seq 2 does not decode: .*{complaint}", error)
        (stored,) = store.events(0, 10)
        assert stored.event.kind is EventKind.QUARANTINED
        assert (stored.event.seq_first, stored.event.seq_last) == (2, 2)
        assert store.stats() == BufferStats(2, 1_764_072_000_001, 3, 0, 1)
    finally:
        store.close()


async def test_live_readings_overtake_a_paced_backlog_marked_historical(
    broker: MosquittoBroker, fleet: FleetSubscriber, tmp_path: Path
):
    path = tmp_path / "buffer.db"
    buffer = await Buffer.open(path, max_size=10**9, max_age_s=1e9)
    try:
        parts = Parts(broker, buffer, path)
        # A slow pace, so that the backlog is still draining when live readings come.
        parts.forwarder = Forwarder(
            settings_of(
                MqttConfig(host=broker.host, port=broker.port, max_inflight=5, reconnect_max=0.5)
            ),
            wire_dialect("fieldgate", "gw-f"),
            buffer,
            SystemClock(),
            parts.uplink,
            parts.storage,
            gateway_id="gw-f",
            replay_rate=5,
        )
        await parts.append(1, 40)  # waiting before the session: the backlog
        async with running(parts.forwarder):
            await eventually(lambda: len(seqs_received(fleet)) >= 1)
            await parts.append(41, 45)  # live
            await eventually(lambda: set(range(1, 46)) <= set(seqs_received(fleet)))
            await eventually(lambda: rows_waiting(path) == 0)
    finally:
        await buffer.close()
    received = fleet.readings()
    historical = [r["seq"] for r in received if r.get("historical")]
    live = [r["seq"] for r in received if not r.get("historical")]
    assert historical == list(range(1, 41))
    assert live == list(range(41, 46))
    # Every live reading arrived before the backlog's last.
    order = seqs_received(fleet)
    assert max(order.index(seq) for seq in live) < order.index(40)


async def test_drop_events_reach_the_event_topic_and_leave_after_puback(
    broker: MosquittoBroker, fleet: FleetSubscriber, tmp_path: Path
):
    path = tmp_path / "buffer.db"
    store = ReadingStore(path, max_size=10**9, max_age_s=60)
    for number in range(1, 11):
        store.append(Reading(f"m{number % 2}", number * 10_000, (PointValue("v", 1.0, "V"),)))
    assert store.enforce_limits(now_ms=125_000) == 6  # read before 65 s: too old
    store.close()
    buffer = await Buffer.open(path, max_size=10**9, max_age_s=60)
    try:
        parts = Parts(broker, buffer, path)
        async with running(parts.forwarder):
            await eventually(lambda: set(range(7, 11)) <= set(seqs_received(fleet)))
            await eventually(lambda: bool(fleet.messages(lambda t: t.endswith("/events"))))
            await eventually(lambda: events_waiting(path) == 0)
    finally:
        await buffer.close()
    (message,) = fleet.messages(lambda t: t == "fieldgate/gw-f/events")
    document = json.loads(message.payload)
    assert {k: document[k] for k in ("event", "reason", "seq_first", "seq_last", "count")} == {
        "event": "dropped",
        "reason": "max_age",
        "seq_first": 1,
        "seq_last": 6,
        "count": 6,
    }
    assert {name: d["count"] for name, d in document["devices"].items()} == {"m0": 3, "m1": 3}
    assert not message.retain


def events_waiting(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
        return count
