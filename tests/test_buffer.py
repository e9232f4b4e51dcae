"""The SQLite buffer: durable appends, oldest-first reads, deletes only of what was acknowledged,
sequence numbers never reused, limits that drop the oldest and count them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.buffer import Buffer, ReadingStore
from gateway.errors import StorageError
from gateway.readings import PointValue, Quality, Reading


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


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path):
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot open the buffer"):
        ReadingStore(path, max_size=10**9, max_age_s=1e9)


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
