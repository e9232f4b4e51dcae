"""The SQLite buffer: durable appends in groups, oldest-first reads, deletes only of what was
acknowledged, sequence numbers never reused, limits that drop the oldest and count them per
device with an event naming the range; a damaged file moved aside; a failing disk (locked, full,
read-only: real files on a real small filesystem) survived with a bounded memory queue."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest

from gateway.buffer import Buffer, ReadingStore
from gateway.buffer_report import export
from gateway.errors import StorageDeferred, StorageError
from gateway.events import DeviceDrops, DropReason, EventKind
from gateway.health import PartHealth
from gateway.readings import PointValue, Quality, Reading, Unsynchronised
from gateway.upstream.forwarder import Pace
from tests.harness import held_write_lock


def reading(device: str, at_ms: int, value: float | None = 1.5) -> Reading:
    return Reading(device, at_ms, (PointValue("v", value, "V"),))


def test_readings_come_back_oldest_first_and_survive_reopening(tmp_path: Path):
    path = tmp_path / "buffer.db"
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    seqs = [store.append(reading("m1", 1000 + i, float(i))) for i in range(5)]
    store.close()
    reopened = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    rows = reopened.oldest(after_seq=0, limit=10)
    assert [r.seq for r in rows] == seqs == sorted(seqs)
    assert [r.reading.values[0].value for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert rows[0].reading == reading("m1", 1000, 0.0)
    assert [r.seq for r in reopened.oldest(after_seq=seqs[2], limit=10)] == seqs[3:]


def test_sequence_numbers_are_never_reused_after_delete(tmp_path: Path):
    path = tmp_path / "buffer.db"
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    first = [store.append(reading("m1", i)) for i in range(3)]
    store.delete(first)
    store.close()
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    assert store.append(reading("m1", 10)) == first[-1] + 1
    assert store.stats().waiting == 1


def test_partial_readings_keep_their_nulls(tmp_path: Path):
    store = ReadingStore(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    partial = Reading("m1", 5, (PointValue("v", None, "V"),), Quality.PARTIAL)
    store.append(partial)
    assert store.oldest(0, 1)[0].reading == partial


def test_age_limit_drops_oldest_and_counts(tmp_path: Path):
    store = ReadingStore(tmp_path / "b.db", max_size=10**9, max_age_s=120)
    for minute in range(5):
        store.append(reading("m1", minute * 60_000))
    assert store.enforce_limits(now_ms=4 * 60_000 + 30_000) == 3
    stats = store.stats()
    assert (stats.waiting, stats.dropped, stats.oldest_read_at_ms) == (2, 3, 3 * 60_000)


def test_size_limit_keeps_the_file_bounded(tmp_path: Path):
    store = ReadingStore(tmp_path / "b.db", max_size=200_000, max_age_s=1e9)
    for i in range(5000):
        store.append(reading("a-meter-with-a-long-name", i))
    stats = store.stats()
    assert stats.dropped > 0
    assert stats.waiting + stats.dropped == 5000
    # What is left is the newest.
    assert store.oldest(0, 1)[0].reading.read_at_ms == 5000 - stats.waiting


def test_wal_mode_is_on(tmp_path: Path):
    ReadingStore(tmp_path / "b.db", max_size=10**9, max_age_s=1e9).close()
    with sqlite3.connect(tmp_path / "b.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_async_buffer_wakes_the_forwarder(tmp_path: Path):
    buffer = await Buffer.open(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    try:
        seq = await buffer.append(reading("m1", 1))
        await buffer.wait_appended(timeout=1.0)
        rows = await buffer.oldest(0, 10)
        assert [r.seq for r in rows] == [seq]
        await buffer.delete([seq])
        assert (await buffer.stats()).waiting == 0
    finally:
        await buffer.close()


async def test_live_readings_handed_over_from_memory_are_the_rows_the_file_has(tmp_path: Path):
    # The uplink takes readings newer than its cursor from memory, without reading them back;
    # they must be exactly what the file gives (values, types, nulls, order, seq), and a row
    # numbered outside the buffer's commits must not be skipped.
    path = tmp_path / "b.db"
    buffer = await Buffer.open(path, max_size=10**9, max_age_s=1e9)
    file_only = 2**62  # a through_seq: always read from the file

    def mixed(n: int) -> Reading:
        values = (
            PointValue("v", 229.01, "V"),
            PointValue("n", n, None),
            PointValue("s", f"text {n}", None),
            PointValue("missing", None, "A"),
        )
        return Reading(f"m{n % 3}", 1_700_000_000_000 + n, values, Quality.PARTIAL)

    try:
        first = await asyncio.gather(*(buffer.append(mixed(n)) for n in range(5)))
        second = await asyncio.gather(*(buffer.append(mixed(n)) for n in range(5, 9)))
        assert await buffer.oldest(first[1], 5) == await buffer.oldest(first[1], 5, file_only)
        taken = await buffer.oldest(first[-1], 100)
        assert [r.seq for r in taken] == second
        assert taken == await buffer.oldest(first[-1], 100, file_only)
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            outside = db.execute(
                "INSERT INTO readings (device, read_at_ms, quality, point_values) "
                "VALUES ('x', 1, 'good', '[]')"
            ).lastrowid
        third = await asyncio.gather(*(buffer.append(mixed(n)) for n in range(9, 11)))
        rows = await buffer.oldest(second[-1], 100)
        assert [r.seq for r in rows] == [outside, *third]
    finally:
        await buffer.close()


# Drops are events naming the range, counted per device.


def test_age_drop_is_an_event_naming_the_range_per_device(tmp_path: Path):
    store = ReadingStore(tmp_path / "b.db", max_size=10**9, max_age_s=120)
    for minute in range(6):
        store.append(reading("m1" if minute % 2 else "m2", minute * 60_000))
    assert store.enforce_limits(now_ms=5 * 60_000 + 30_000) == 4
    (stored,) = store.events(0, 10)
    event = stored.event
    assert (event.kind, event.reason, event.seq_first, event.seq_last, event.count) == (
        EventKind.DROPPED,
        DropReason.MAX_AGE,
        1,
        4,
        4,
    )
    assert event.devices == (
        DeviceDrops("m1", 2, 60_000, 180_000),
        DeviceDrops("m2", 2, 0, 120_000),
    )
    assert store.dropped_by_device() == {("m1", "max_age"): 2, ("m2", "max_age"): 2}
    store.delete_events([stored.event_id or 0])
    assert store.events(0, 10) == []


def test_size_drops_are_events_that_account_for_every_dropped_number(tmp_path: Path):
    store = ReadingStore(tmp_path / "b.db", max_size=100_000, max_age_s=1e9)
    for i in range(5000):
        store.append(reading(f"meter-{i % 3}", i))
    events = [e.event for e in store.events(0, 1000)]
    assert events
    assert {e.reason for e in events} == {DropReason.MAX_SIZE}
    # The ranges follow one another, oldest first, and the counts add up to what was dropped.
    waiting = {r.seq for r in store.oldest(0, 10_000)}
    named: set[int] = set()
    for event in events:
        assert event.seq_first is not None
        assert event.seq_last is not None
        named |= set(range(event.seq_first, event.seq_last + 1))
    assert named == set(range(1, 5001)) - waiting
    assert sum(e.count for e in events) == store.stats().dropped == len(named)


# Group commit.


async def test_appends_from_many_devices_share_one_commit(tmp_path: Path):
    buffer = await Buffer.open(tmp_path / "b.db", 10**9, 1e9, commit_delay=0.05)
    try:
        seqs = await asyncio.gather(*(buffer.append(reading(f"m{i % 7}", i)) for i in range(70)))
        assert sorted(seqs) == list(range(1, 71))
        # All were submitted in one step of the loop: one group, one transaction.
        assert (buffer.groups_committed, buffer.readings_committed) == (1, 70)
        # On disk, seen by another connection, when the submitters returned.
        with contextlib.closing(sqlite3.connect(tmp_path / "b.db")) as db:
            assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 70
        # Submitted one after another, each waits for its own group.
        assert await buffer.append(reading("m1", 100)) == 71
        assert buffer.groups_committed == 2
    finally:
        await buffer.close()


async def test_settled_waits_for_the_group_of_submitters_cancelled_before_its_commit(
    tmp_path: Path,
):
    # A stop cancels the pollers while their last readings wait for the group: the uplink's
    # last send must still wait for that group, or it says goodbye without them.
    buffer = await Buffer.open(tmp_path / "b.db", 10**9, 1e9, commit_delay=0.2)
    try:
        submitters = [asyncio.create_task(buffer.append(reading("m1", i))) for i in range(5)]
        await asyncio.sleep(0)  # each is queued for the group
        for submitter in submitters:
            submitter.cancel()
        assert await buffer.settled() == 5
        assert buffer.readings_committed == 5
    finally:
        await buffer.close()


# A damaged or unusable file at the buffer's path.


def write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not sqlite" * 100)


def make_directory(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("someone's file")


def damage_pages(path: Path) -> None:
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    for i in range(3000):
        store.append(reading("m1", i))
    store.close()
    with path.open("r+b") as file:
        # Past the first pages (header, schema): the rows' b-tree pages, overwritten.
        file.seek(4096 * 6)
        file.write(b"\xa5" * 4096 * 4)


@pytest.mark.parametrize(
    ("spoil", "numbers_known"),
    [(write_garbage, False), (make_directory, False), (damage_pages, True)],
    ids=["garbage", "directory", "damaged-pages"],
)
def test_an_unusable_file_is_moved_aside_and_a_fresh_one_started(
    tmp_path: Path, spoil: Callable[[Path], None], numbers_known: bool
):
    path = tmp_path / "b.db"
    spoil(path)
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    try:
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("b.db.damaged-")]
        assert len(aside) >= 1, list(tmp_path.iterdir())
        assert store.replaced is not None
        (stored,) = store.events(0, 10)
        assert stored.event.kind is EventKind.BUFFER_REPLACED
        assert "moved to b.db.damaged-" in (stored.event.detail or "")
        seq = store.append(reading("m1", 1))
        if numbers_known:
            # Numbering goes on after the newest the old file had given.
            assert seq == 3001
            assert stored.event.seq_last == 3000
        else:
            # Nothing tells the old numbers: go on beyond any it can have given.
            assert seq > 10**15
    finally:
        store.close()
    # The next start finds a healthy file and replaces nothing.
    again = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    assert again.replaced is None
    again.close()


# A failing disk: the memory queue.


async def eventually(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the state changes on the buffer's thread
            await asyncio.sleep(0.02)


def rows(path: Path) -> list[tuple[int, str, int]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT seq, device, read_at_ms FROM readings ORDER BY seq").fetchall()


async def test_a_locked_database_holds_readings_in_memory_up_to_the_bound(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = tmp_path / "b.db"
    storing = PartHealth("storing", "readings wait in memory")
    buffer = await Buffer.open(path, 10**9, 1e9, memory_queue=5, storing=storing)
    try:
        assert await buffer.append(reading("a", 1)) == 1
        with held_write_lock(path) as release:
            for at_ms in range(2, 10):  # 8 readings, 5 fit in memory
                with pytest.raises(StorageDeferred, match="database is locked"):
                    await buffer.append(reading("a" if at_ms % 2 else "b", at_ms))
            assert storing.up is False
            assert buffer.held == 5
            assert buffer.memory_dropped == 3
            release()
            await eventually(lambda: storing.up is True)
        # The newest five were written, in order, numbered on disk after the first.
        assert rows(path) == [(1, "a", 1)] + [
            (seq, "a" if at % 2 else "b", at)
            for seq, at in zip(range(2, 7), range(5, 10), strict=True)
        ]
        events = [e.event for e in await buffer.events(0, 10)]
        kinds = [e.kind for e in events]
        assert kinds == [EventKind.DROPPED, EventKind.BUFFER_FAILING, EventKind.BUFFER_RECOVERED]
        drop = events[0]
        assert drop.reason is DropReason.MEMORY_BOUND
        assert drop.devices == (DeviceDrops("a", 1, 3, 3), DeviceDrops("b", 2, 2, 4))
        assert (drop.seq_first, drop.seq_last) == (None, None)
        assert "5 reading(s) held in memory written, 3 dropped" in (events[2].detail or "")
        # Appends are durable again, one group each.
        assert await buffer.append(reading("a", 10)) == 7
    finally:
        await buffer.close()
    assert sum("storing failed" in r.getMessage() for r in caplog.records) == 1


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs with a size limit), unmounted at the end."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
        check=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte with one file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def big_reading(number: int) -> Reading:
    points = tuple(PointValue(f"point_{i}", float(number) + i / 7, "kWh") for i in range(40))
    return Reading(f"m{number % 3}", number, points)


async def test_a_full_filesystem_is_survived_and_writing_resumes(small_fs: Path):
    path = small_fs / "b.db"
    storing = PartHealth("storing", "readings wait in memory")
    buffer = await Buffer.open(path, 10**9, 1e9, memory_queue=100_000, storing=storing)
    try:
        submitted = 0
        for _ in range(20):
            submitted += 1
            await buffer.append(big_reading(submitted))
        filler = fill(small_fs)
        deferred = 0
        # Bounded: the WAL's room runs out after a few hundred kilobytes at most.
        while deferred < 50 and submitted < 5000:
            submitted += 1
            try:
                await buffer.append(big_reading(submitted))
            except StorageDeferred:
                deferred += 1
        assert storing.up is False, "the disk never filled"
        assert "full" in (storing.last_error or "")
        assert buffer.held > 0
        filler.unlink()
        await eventually(lambda: storing.up is True and buffer.held == 0)
    finally:
        await buffer.close()
    stored = rows(path)
    # Nothing lost, numbered in the order submitted, no number skipped.
    assert [at for _, _, at in stored] == list(range(1, submitted + 1))
    assert [seq for seq, _, _ in stored] == list(range(1, submitted + 1))


async def test_a_read_only_filesystem_at_start_is_survived_and_writing_begins(small_fs: Path):
    remount(small_fs, "ro")
    path = small_fs / "b.db"
    storing = PartHealth("storing", "readings wait in memory")
    buffer = await Buffer.open(path, 10**9, 1e9, storing=storing)
    try:
        assert storing.up is False
        assert "is not writable" in (storing.last_error or "")
        for number in range(1, 11):
            with pytest.raises(StorageDeferred):
                await buffer.append(big_reading(number))
        with pytest.raises(StorageError, match="not open"):
            await buffer.oldest(0, 10)
        remount(small_fs, "rw")
        await eventually(lambda: storing.up is True and buffer.held == 0)
        assert [r.reading.read_at_ms for r in await buffer.oldest(0, 100)] == list(range(1, 11))
    finally:
        await buffer.close()


def test_the_pace_of_the_backlog_counts_tokens_not_time():
    pace = Pace(rate=10, burst=5, now=100.0)
    assert pace.take(5, now=100.0) == 0
    assert pace.wait() == pytest.approx(0.1)
    assert pace.take(5, now=100.35) == 3
    assert pace.take(5, now=110.0) == 5  # never more than the burst
    assert Pace(rate=0, burst=5, now=0).take(1000, now=0) == 1000


# WAL checkpoints off the commit path.


async def test_wal_checkpoints_run_beside_the_commits_and_keep_the_wal_bounded(tmp_path: Path):
    path = tmp_path / "b.db"
    buffer = await Buffer.open(path, 10**12, 1e12, commit_delay=0.001)
    wal = Path(f"{path}-wal")
    largest = 0
    try:
        for slot in range(400):  # ~40 KiB a group: ~16 MiB through the WAL in all
            await asyncio.gather(*(buffer.append(big_reading(slot * 100 + d)) for d in range(20)))
            largest = max(largest, wal_size(wal))
        # Started by the group commits, run on their own thread (the commit's own connection
        # has SQLite's automatic checkpoint off: it would run inside a commit).
        await eventually(lambda: buffer.checkpoints >= 4)
        assert len(rows(path)) == 8000
    finally:
        await buffer.close()
    # Cut back to the limit after each checkpoint: a few MiB at most, not the 16 written.
    assert largest < 4 << 20, largest
    assert wal_size(wal) == 0  # the last connection to close checkpointed and removed it


def wal_size(wal: Path) -> int:
    return wal.stat().st_size if wal.exists() else 0


def page_counts(path: Path) -> tuple[int, int]:
    """(pages in the file, free pages), as a technician's sqlite3 shell would show them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return (
            db.execute("PRAGMA page_count").fetchone()[0],
            db.execute("PRAGMA freelist_count").fetchone()[0],
        )


def test_the_file_gives_back_the_space_of_a_drained_backlog(tmp_path: Path):
    path = tmp_path / "b.db"
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    try:
        big = tuple(PointValue(f"p{i}", 230.0 + i, "V") for i in range(30))
        backlog = store.append_many([Reading("m1", i, big) for i in range(20_000)])
        peak, _ = page_counts(path)
        # The backlog drains in acknowledged batches, as the forwarder deletes it; nothing is
        # given back while a long backlog waits (those pages are reused by new readings).
        for start in range(0, 9_500, 500):
            store.delete(backlog[start : start + 500])
        assert store.vacuumed_pages == 0
        for start in range(9_500, len(backlog), 500):
            store.delete(backlog[start : start + 500])
        while store.vacuumed_pages < peak // 2:
            before = store.vacuumed_pages
            live = store.append(Reading("m1", 99_999, big))
            store.delete([live])  # live traffic: each acknowledged delete gives back a step
            assert store.vacuumed_pages > before
        waiting = store.stats().waiting
    finally:
        store.close()
    pages, free = page_counts(path)
    assert waiting == 0
    assert pages < peak / 2
    assert free < 256


def test_an_older_file_is_converted_once_and_keeps_its_readings(tmp_path: Path):
    path = tmp_path / "b.db"
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    seqs = [store.append(reading("m1", i, float(i))) for i in range(50)]
    store.close()
    # As files made before incremental vacuum were: auto_vacuum NONE.
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA auto_vacuum=NONE")
        db.execute("VACUUM")
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    try:
        assert [r.seq for r in store.oldest(0, 100)] == seqs
        assert store.oldest(0, 100)[-1].reading == reading("m1", 49, 49.0)
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL


def test_a_quarantined_held_row_keeps_the_monotonic_stamp_that_dates_it(tmp_path: Path):
    path = tmp_path / "b.db"
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9, boot_id="boot-a")
    try:
        held = Reading(
            "m1", 5, (PointValue("v", 1.0, "V"),), unsynchronised=Unsynchronised("boot-old", 42_000)
        )
        store.append(held)
        store.append(reading("m1", 6))
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("UPDATE readings SET point_values = 'not json' WHERE seq = 1")
        assert [r.seq for r in store.oldest(0, 10)] == [2]
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        kept = db.execute("SELECT seq, boot_id, monotonic_ms FROM quarantine").fetchall()
    assert kept == [(1, "boot-old", 42_000)]


def test_deleting_acknowledged_readings_removes_exactly_those(tmp_path: Path):
    store = ReadingStore(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    seqs = [store.append(reading("m1", n)) for n in range(12)]
    acked = [seqs[i] for i in (7, 0, 1, 2, 5, 9, 10, 2)]  # out of order, runs, a duplicate
    store.delete(acked)
    left = [r.seq for r in store.oldest(0, 100)]
    assert left == [seq for seq in seqs if seq not in acked]


# Rows as the wire sends them: values and a layout id, names and units once per layout.

#: The tables of a file written before layouts (time-keeping's columns included), in its
#: 4 KiB pages.
_BEFORE_LAYOUTS = """
PRAGMA page_size=4096;
PRAGMA auto_vacuum=INCREMENTAL;
PRAGMA journal_mode=WAL;
CREATE TABLE readings (seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL,
    read_at_ms INTEGER NOT NULL, quality TEXT NOT NULL, point_values TEXT NOT NULL,
    boot_id TEXT, monotonic_ms INTEGER);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE quarantine (seq INTEGER PRIMARY KEY, device, read_at_ms, quality, point_values,
    error TEXT NOT NULL, quarantined_at_ms INTEGER NOT NULL, boot_id TEXT, monotonic_ms INTEGER);
CREATE TABLE dropped (device TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (device, reason));
"""

_EVERY_KIND = (
    PointValue("energy", 2**63 - 1, "Wh"),
    PointValue("counter", 2**64 - 1, None),
    PointValue("voltage", 231.6693878173828, "V"),
    PointValue("serial", "SN-0042 ✓", None),
    PointValue("missing", None, "A"),
)


def file_before_layouts(path: Path, readings: list[Reading]) -> None:
    """A buffer as the code before layouts left it: [name, value, unit] triples in each row,
    the newest numbers already sent and deleted."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(_BEFORE_LAYOUTS)
        for r in [*readings, reading("sent", 0)]:
            triples = [[p.name, p.value, p.unit] for p in r.values]
            db.execute(
                "INSERT INTO readings (device, read_at_ms, quality, point_values) "
                "VALUES (?, ?, ?, ?)",
                (r.device, r.read_at_ms, str(r.quality), json.dumps(triples)),
            )
        db.execute("DELETE FROM readings WHERE device = 'sent'")


def test_a_file_from_before_layouts_keeps_every_reading_with_its_number_and_values(
    tmp_path: Path,
):
    path = tmp_path / "b.db"
    old = [
        Reading("m1", 1_764_072_000_000, _EVERY_KIND, Quality.PARTIAL),
        reading("m2", 1_764_072_000_001, 229.9),
    ]
    file_before_layouts(path, old)
    new = Reading("m1", 1_764_072_010_000, _EVERY_KIND, Quality.PARTIAL)
    for _ in range(2):  # opened again: nothing changes twice
        store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
        try:
            if store.stats().newest_seq == 2:
                # Numbered after the old file's newest number ever given (3, sent), not reused.
                assert store.append(new) == 4
            rows = store.oldest(0, 10)
        finally:
            store.close()
        assert [(r.seq, r.reading) for r in rows] == [(1, old[0]), (2, old[1]), (4, new)]
        assert [type(p.value) for p in rows[2].reading.values] == [int, int, float, str, type(None)]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA page_size").fetchone()[0] == 1024  # converted once
        stored = db.execute(
            "SELECT seq, layout, point_values FROM readings ORDER BY seq"
        ).fetchall()
        (layout,) = db.execute("SELECT points FROM layouts").fetchone()
    # The new row keeps the values alone, as the wire sends them; names and units once.
    assert stored[:2] == [(1, None, ANY), (2, None, ANY)]
    assert stored[2] == (
        4,
        1,
        '[9223372036854775807,18446744073709551615,231.6693878173828,"SN-0042 \\u2713",null]',
    )
    assert json.loads(layout) == [
        ["energy", "Wh"],
        ["counter", None],
        ["voltage", "V"],
        ["serial", None],
        ["missing", "A"],
    ]


def test_rows_of_the_same_points_share_one_layout_even_across_reopening(tmp_path: Path):
    path = tmp_path / "b.db"
    for _ in range(2):
        store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
        try:
            store.append_many([reading(f"m{n}", n, float(n)) for n in range(5)])
            store.append(Reading("m9", 9, _EVERY_KIND))
        finally:
            store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        layouts = db.execute("SELECT count(*) FROM layouts").fetchone()[0]
        used = db.execute("SELECT layout, count(*) FROM readings GROUP BY layout").fetchall()
    assert layouts == 2
    assert used == [(1, 10), (2, 2)]


def test_a_layout_numbered_in_a_failed_commit_is_not_used_later(tmp_path: Path):
    path = tmp_path / "b.db"
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    try:
        # The layout is numbered, then the row fails: the transaction, layout and all, is
        # rolled back, and the store must not remember the number.
        unstorable = Reading("m1", None, _EVERY_KIND)  # type: ignore[arg-type]
        with pytest.raises(StorageError, match="NOT NULL"):
            store.append(unstorable)
        store.append(Reading("m1", 2, _EVERY_KIND))
        (row,) = store.oldest(0, 10)
    finally:
        store.close()
    assert row.reading == Reading("m1", 2, _EVERY_KIND)


def test_export_shows_names_units_and_values_of_rows_of_both_formats(tmp_path: Path):
    path = tmp_path / "b.db"
    file_before_layouts(path, [reading("m1", 1_764_072_000_000, 229.5)])
    store = ReadingStore(path, max_size=10**9, max_age_s=1e9)
    try:
        store.append(Reading("m1", 1_764_072_010_000, _EVERY_KIND[:3]))
        store.append(reading("m2", 1_764_072_020_000, 1.25))
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE readings SET layout = 99 WHERE device = 'm2'")  # a damaged row
    lines = io.StringIO()
    exported = export(path, lines, since_ms=None, until_ms=None, devices=[], output_format="jsonl")
    assert exported == (2, [4])
    first, second = (json.loads(line) for line in lines.getvalue().splitlines())
    assert (first["seq"], first["values"]) == (1, {"v": {"value": 229.5, "unit": "V"}})
    assert (second["seq"], second["ts"]) == (3, "2025-11-25T12:00:10.000Z")
    assert second["values"] == {
        "energy": {"value": 2**63 - 1, "unit": "Wh"},
        "counter": {"value": 2**64 - 1, "unit": None},
        "voltage": {"value": 231.6693878173828, "unit": "V"},
    }
    table = io.StringIO()
    export(path, table, since_ms=None, until_ms=None, devices=["m1"], output_format="csv")
    rows = list(csv.reader(io.StringIO(table.getvalue())))
    assert rows == [
        ["seq", "device", "ts", "quality", "point", "value", "unit"],
        ["1", "m1", "2025-11-25T12:00:00.000Z", "good", "v", "229.5", "V"],
        ["3", "m1", "2025-11-25T12:00:10.000Z", "good", "energy", str(2**63 - 1), "Wh"],
        ["3", "m1", "2025-11-25T12:00:10.000Z", "good", "counter", str(2**64 - 1), ""],
        ["3", "m1", "2025-11-25T12:00:10.000Z", "good", "voltage", "231.6693878173828", "V"],
    ]
