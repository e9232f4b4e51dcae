"""Time without a real-time clock, driven by injected clocks and evidence (never by changing the
machine's time): readings taken before the clock synchronised are held in the buffer and
restamped at the sync, or sent flagged after a reboot; a step of the wall clock neither bursts
nor double-polls nor skips, keeps sequence numbers in storage order, and is logged once."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.mosquitto import MosquittoBroker

from gateway.buffer import Buffer, ReadingStore
from gateway.clock import SystemClock, epoch_ms
from gateway.config.handover import settings_of
from gateway.config.model import MqttConfig
from gateway.health import HealthRegistry, PartHealth
from gateway.readings import BufferedReading, PointValue, Reading, Unsynchronised
from gateway.scheduler import DevicePoller, slot_after_step
from gateway.sink import Sink
from gateway.timekeeping import (
    BUILD_FLOOR,
    RECHECK_EVERY,
    SyncEvidence,
    TrustCheck,
    current_boot_id,
    kernel_synchronised,
    restamped_ms,
    system_evidence,
    wall_trustworthy,
)
from gateway.upstream.forwarder import Forwarder
from gateway.upstream.json_dialect import iso_utc_ms
from tests.manual_clock import ManualClock
from tests.test_dialect import VALIDATOR
from tests.test_forwarder import eventually, rows_waiting, running
from tests.wire import dialect as wire_dialect

#: Where the tests' synchronised wall clock is, against the monotonic one.
SYNCED = 1_800_000_000.0
BOOT = "boot-a"

# The judgement, on evidence a test chooses.

NO_CLIENT = SyncEvidence(False, None, False)  # a VM or container: the host keeps the time
TIMESYNCD_WAITING = SyncEvidence(True, False, None)  # under ProtectClock=: adjtimex refused
TIMESYNCD_SYNCED = SyncEvidence(True, True, None)
CHRONY_WAITING = SyncEvidence(True, None, False)
CHRONY_SYNCED = SyncEvidence(True, None, True)
NOTHING_TELLS = SyncEvidence(False, None, None)


@pytest.mark.parametrize(
    ("wall", "evidence", "trusted"),
    [
        (0.0, CHRONY_SYNCED, False),  # 1970 after a power cut: below the floor, whatever else
        (BUILD_FLOOR - 1, TIMESYNCD_SYNCED, False),
        (BUILD_FLOOR + 1, TIMESYNCD_WAITING, False),  # fake-hwclock's saved time, not synced
        (BUILD_FLOOR + 1, TIMESYNCD_SYNCED, True),
        (BUILD_FLOOR + 1, CHRONY_WAITING, False),
        (BUILD_FLOOR + 1, CHRONY_SYNCED, True),
        (BUILD_FLOOR + 1, SyncEvidence(True, False, True), True),  # the kernel was disciplined
        (BUILD_FLOOR + 1, NO_CLIENT, True),  # unsynced forever there: it proves nothing
        (BUILD_FLOOR + 1, NOTHING_TELLS, True),
    ],
)
def test_whether_the_wall_clock_is_trustworthy(
    wall: float, evidence: SyncEvidence, trusted: bool
) -> None:
    assert wall_trustworthy(wall, evidence) is trusted


def test_evidence_from_a_run_directory(tmp_path: Path) -> None:
    assert system_evidence(tmp_path).ntp_client_running is False
    (tmp_path / "systemd" / "timesync").mkdir(parents=True)
    waiting = system_evidence(tmp_path)
    assert (waiting.ntp_client_running, waiting.timesyncd_synchronised) == (True, False)
    (tmp_path / "systemd" / "timesync" / "synchronized").touch()
    assert system_evidence(tmp_path).timesyncd_synchronised is True
    # The real syscall: read-only, so it answers here whatever this machine's state is.
    assert kernel_synchronised() in {True, False, None}
    assert SystemClock().synchronised() in {True, False}


def test_the_evidence_is_gathered_at_most_every_few_seconds() -> None:
    gathered: list[SyncEvidence] = []
    answers = iter([TIMESYNCD_WAITING, TIMESYNCD_SYNCED])

    def evidence() -> SyncEvidence:
        gathered.append(next(answers))
        return gathered[-1]

    check = TrustCheck(evidence)
    wall = BUILD_FLOOR + 10
    assert [check.synchronised(wall, t) for t in (0.0, 1.0, 4.9)] == [False] * 3
    assert len(gathered) == 1
    assert check.synchronised(wall, 5.0) is True
    assert check.synchronised(BUILD_FLOOR - 10, 6.0) is False  # the floor, every time
    assert len(gathered) == 2


def test_the_boot_id_comes_from_the_kernel_or_is_this_process(tmp_path: Path) -> None:
    (tmp_path / "boot_id").write_text("4a0c\n", encoding="ascii")
    assert current_boot_id(tmp_path / "boot_id") == "4a0c"
    assert current_boot_id(tmp_path / "absent").startswith("process-")


def test_restamping_counts_back_from_the_sync() -> None:
    assert restamped_ms(1_800_000_100_000, 1_100_000, 1_010_000) == 1_800_000_010_000


# Held, restamped, flagged: a real buffer file, the JSON dialect.


def meter_reading(clock: ManualClock, number: int) -> Reading:
    return Reading("m1", epoch_ms(clock), (PointValue("v", float(number), "V"),))


async def submit_unsynchronised(sink: Sink, clock: ManualClock, count: int) -> list[float]:
    """``count`` readings 10 s apart, read before the clock synchronised; their monotonic
    times."""
    taken = []
    for number in range(count):
        clock.now += 10
        taken.append(clock.now)
        await sink.submit(meter_reading(clock, number))
    return taken


def sync(clock: ManualClock) -> None:
    clock.now += 5
    clock.step(SYNCED)
    clock.synced = True


async def test_readings_before_sync_are_held_then_restamped_in_place(tmp_path: Path) -> None:
    clock = ManualClock(1000.0, synced=False)  # the wall clock says 1970
    buffer = await Buffer.open(tmp_path / "b.db", 10**9, 1e9, boot_id=BOOT)
    try:
        sink = Sink(buffer, HealthRegistry(), clock)
        taken = await submit_unsynchronised(sink, clock, 3)
        assert await buffer.oldest(0, 100) == []  # stored, held back from the uplink
        assert (await buffer.stats()).waiting == 3
        sync(clock)
        await sink.submit(meter_reading(clock, 3))
        sent = await buffer.oldest(0, 100)
    finally:
        await buffer.close()
    # Sequence numbers stay those of storage; the times are those the meter was read at.
    assert [b.seq for b in sent] == [1, 2, 3, 4]
    expected = [round((t + SYNCED) * 1000) for t in [*taken, clock.now]]
    assert [b.reading.read_at_ms for b in sent] == expected
    assert all(b.reading.unsynchronised is None for b in sent)
    message = json.loads(wire_dialect("fg", "gw").reading(sent[0], historical=True).payload)
    assert "time" not in message
    assert message["ts"] == iso_utc_ms(expected[0])


async def test_held_readings_are_restamped_when_the_clock_syncs_with_no_reading_after(
    tmp_path: Path,
) -> None:
    """Every device went quiet after the readings were held: the sink's clock watch restamps
    them on its own within one check after the sync."""
    clock = ManualClock(1000.0, synced=False)
    buffer = await Buffer.open(tmp_path / "b.db", 10**9, 1e9, boot_id=BOOT)
    sink = Sink(buffer, HealthRegistry(), clock)
    watch = asyncio.create_task(sink.watch_clock())
    try:
        taken = await submit_unsynchronised(sink, clock, 3)
        await clock.settle(1)
        await clock.advance_to(clock.now + RECHECK_EVERY, sleepers=1)
        assert await buffer.oldest(0, 100) == []  # not synchronised yet: still held
        sync(clock)
        await clock.advance_to(clock.now + RECHECK_EVERY, sleepers=1)
        sent = await buffer.oldest(0, 100)
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await buffer.close()
    assert [b.reading.read_at_ms for b in sent] == [round((t + SYNCED) * 1000) for t in taken]


async def test_a_restart_within_the_boot_still_restamps(tmp_path: Path) -> None:
    clock = ManualClock(1000.0, synced=False)
    path = tmp_path / "b.db"
    buffer = await Buffer.open(path, 10**9, 1e9, boot_id=BOOT)
    try:
        taken = await submit_unsynchronised(Sink(buffer, HealthRegistry(), clock), clock, 2)
    finally:
        await buffer.close()
    sync(clock)
    buffer = await Buffer.open(path, 10**9, 1e9, boot_id=BOOT)  # the same boot, a new process
    try:
        await Sink(buffer, HealthRegistry(), clock).submit(meter_reading(clock, 2))
        sent = await buffer.oldest(0, 100)
    finally:
        await buffer.close()
    assert [b.reading.read_at_ms for b in sent[:2]] == [round((t + SYNCED) * 1000) for t in taken]


async def test_readings_of_a_boot_that_never_synced_go_flagged(tmp_path: Path) -> None:
    clock = ManualClock(1000.0, synced=False)
    path = tmp_path / "b.db"
    buffer = await Buffer.open(path, 10**9, 1e9, boot_id=BOOT)
    try:
        await submit_unsynchronised(Sink(buffer, HealthRegistry(), clock), clock, 2)
    finally:
        await buffer.close()
    buffer = await Buffer.open(path, 10**9, 1e9, boot_id="boot-b")  # the box rebooted
    try:
        sent = await buffer.oldest(0, 100)
    finally:
        await buffer.close()
    assert [b.seq for b in sent] == [1, 2]
    assert [b.reading.read_at_ms for b in sent] == [1_010_000, 1_020_000]  # the best guess
    stamp = sent[0].reading.unsynchronised
    assert stamp == Unsynchronised(BOOT, 1_010_000)
    message = json.loads(wire_dialect("fg", "gw").reading(sent[0]).payload)
    assert message["time"] == "unsynchronised"
    VALIDATOR.validate(message)


def test_a_file_from_before_timekeeping_is_migrated_at_open(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE readings (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,"
            " read_at_ms INTEGER NOT NULL, quality TEXT NOT NULL, point_values TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO readings (device, read_at_ms, quality, point_values) "
            "VALUES ('m1', 1764072000000, 'good', '[[\"v\",1.5,\"V\"]]')"
        )
    db.close()
    for _ in range(2):  # idempotent: every open runs it
        store = ReadingStore(path, 10**9, 1e9, boot_id=BOOT)
        try:
            (old,) = store.oldest(0, 10)
        finally:
            store.close()
        expected = Reading("m1", 1_764_072_000_000, (PointValue("v", 1.5, "V"),))
        assert old == BufferedReading(1, expected)


def forwarder_to(broker: MosquittoBroker, buffer: Buffer) -> Forwarder:
    return Forwarder(
        settings_of(MqttConfig(host=broker.host, port=broker.port, keepalive=5, reconnect_max=0.5)),
        wire_dialect("fieldgate", "gw-t"),
        buffer,
        SystemClock(),
        PartHealth("the uplink", "readings stay buffered"),
        PartHealth("the buffer", "readings are not sent"),
        gateway_id="gw-t",
    )


async def test_held_readings_reach_the_broker_only_restamped(
    broker: MosquittoBroker, fleet: FleetSubscriber, tmp_path: Path
) -> None:
    """The forwarder passes held rows by, and reads them again once they are restamped."""
    clock = ManualClock(1000.0, synced=False)
    path = tmp_path / "b.db"
    buffer = await Buffer.open(path, 10**9, 1e9, boot_id=BOOT)
    forwarder = forwarder_to(broker, buffer)
    try:
        async with running(forwarder):
            sink = Sink(buffer, HealthRegistry(), clock)
            taken = await submit_unsynchronised(sink, clock, 5)
            # Behind the held rows, one of an earlier boot that never synced: once it is at
            # the broker, the forwarder has read past the held ones without sending them.
            earlier = Unsynchronised("boot-0", 7)
            await buffer.append(
                Reading("m2", 8, (PointValue("v", 0.0, "V"),), unsynchronised=earlier)
            )
            await eventually(lambda: [d["seq"] for d in fleet.readings()] == [6])
            sync(clock)
            await sink.submit(meter_reading(clock, 7))
            await eventually(lambda: rows_waiting(path) == 0)
            await eventually(lambda: {d["seq"] for d in fleet.readings()} == set(range(1, 8)))
    finally:
        await buffer.close()
    by_seq = {d["seq"]: d for d in fleet.readings()}
    assert by_seq[6]["time"] == "unsynchronised"
    for seq, moment in enumerate(taken, start=1):
        assert by_seq[seq]["ts"] == iso_utc_ms(round((moment + SYNCED) * 1000))
        assert by_seq[seq]["historical"] is True
        assert "time" not in by_seq[seq]
    assert "historical" not in by_seq[7]
    for document in fleet.readings():
        VALIDATOR.validate(document)


async def test_a_stop_does_not_wait_for_readings_held_for_the_clock(
    broker: MosquittoBroker, fleet: FleetSubscriber, tmp_path: Path
) -> None:
    """Before the goodbye, send_last waits for the broker to take the pollers' last readings;
    held ones may not go yet, so it must not wait for them (a box without a synchronised
    clock would stop its whole bound later, every time)."""
    clock = ManualClock(1000.0, synced=False)
    path = tmp_path / "b.db"
    buffer = await Buffer.open(path, 10**9, 1e9, boot_id=BOOT)
    forwarder = forwarder_to(broker, buffer)
    try:
        async with running(forwarder):
            await buffer.append(Reading("m2", 8, (PointValue("v", 0.0, "V"),)))
            await eventually(lambda: [d["seq"] for d in fleet.readings()] == [1])
            await submit_unsynchronised(Sink(buffer, HealthRegistry(), clock), clock, 3)
            async with asyncio.timeout(30):  # far below its own bound
                await forwarder.send_last(600)
    finally:
        await buffer.close()
    assert rows_waiting(path) == 3  # held, for the next synchronised start


# Steps of the wall clock, under the scheduler.


class StampingDevice:
    """Answers at once; records when it was polled on the monotonic clock."""

    def __init__(self, name: str, clock: ManualClock) -> None:
        self.name, self.clock = name, clock
        self.polled: list[float] = []

    async def read(self) -> Reading:
        self.polled.append(self.clock.now)
        return Reading(self.name, epoch_ms(self.clock), (PointValue("v", 1.0),))


@pytest.mark.parametrize("step", [86_400.0 + 3, 3.0, 7.0, -3.0, -7.0, -3600.0])
async def test_a_step_of_the_wall_clock_keeps_the_pace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, step: float
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.timekeeping")
    clock = ManualClock(start=1000.0)
    devices = [StampingDevice("a", clock), StampingDevice("b", clock)]
    buffer = await Buffer.open(tmp_path / "b.db", 10**9, 1e9, boot_id=BOOT)
    health = HealthRegistry()
    sink = Sink(buffer, health, clock)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(DevicePoller(d, 10.0, sink, clock, stop).run()) for d in devices]
    try:
        await clock.settle(sleepers=2)
        await clock.advance_to(1035.0, sleepers=2)
        clock.step(step)
        await clock.advance_to(1200.0, sleepers=2)
        stored = await buffer.oldest(0, 1000)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await buffer.close()
    for device in devices:
        gaps = [b - a for a, b in zip(device.polled, device.polled[1:], strict=False)]
        # No burst and no double poll (never within half an interval), no hole (never more
        # than an interval and a half): one poll per interval of real time.
        assert all(5.0 <= gap <= 15.0 for gap in gaps), (step, device.polled)
        assert len(device.polled) in {19, 20}
        assert health.device(device.name).cycles_skipped == 0
    # Storage order is poll order, whatever the stamps say.
    assert [b.seq for b in stored] == sorted(b.seq for b in stored)
    assert len(stored) == sum(len(d.polled) for d in devices)
    steps = [r for r in caplog.records if "stepped" in r.getMessage()]
    assert len(steps) == 1, [r.getMessage() for r in steps]


@pytest.mark.parametrize(
    ("polled_at", "now", "expected"),
    [
        (1030.0, 1037.0, (1040.0, 0)),  # stepped back 3 s after the poll at :30
        (1033.0, 1043.0, (1040.0, 0)),  # forward 3 s: the slot at :40 passed just now
        (1030.0, 1075.0, (1080.0, 4)),  # a poll that ran 45 s: the four slots it ran past
    ],
)
def test_the_slot_after_a_step(polled_at: float, now: float, expected: tuple[float, int]) -> None:
    assert slot_after_step(polled_at, now, 10.0) == expected


def test_the_age_limit_spares_readings_whose_age_is_unknown(tmp_path: Path) -> None:
    store = ReadingStore(tmp_path / "b.db", 10**9, max_age_s=3600, boot_id=BOOT)
    try:
        held = Unsynchronised(BOOT, 5_000)
        store.append_many(
            [
                Reading("m1", 1_000, (PointValue("v", 1.0),), unsynchronised=held),  # 1970
                Reading("m1", 1_764_072_000_000, (PointValue("v", 2.0),)),  # a day old
            ]
        )
        assert store.enforce_limits(1_764_158_400_000) == 1
        assert store.stats().waiting == 1
        assert store.restamp(1_800_000_000_000, 10_000) == 1
        (kept,) = store.oldest(0, 10)
    finally:
        store.close()
    assert kept.reading.read_at_ms == 1_800_000_000_000 - 5_000
