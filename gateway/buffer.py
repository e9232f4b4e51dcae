"""Store-and-forward buffer: every reading is committed to SQLite before its poll counts as done,
and leaves only after the broker acknowledged it.

:class:`ReadingStore` is the synchronous store; it is used from one thread only.
:class:`Buffer` is what the event loop uses: the same operations run on a dedicated thread, so
a slow disk (an SD card's fsync) never blocks polling or MQTT.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import StorageError
from gateway.readings import BufferedReading, PointValue, Quality, Reading

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    -- AUTOINCREMENT: a sequence number is never reused, even after the newest rows were sent
    -- and deleted, so the fleet side can rely on it to find gaps and drop duplicates.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    read_at_ms INTEGER NOT NULL,
    quality TEXT NOT NULL,
    point_values TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

#: How many appends between checks of the size and age limits.
_LIMIT_CHECK_EVERY = 256


@dataclass(frozen=True, slots=True)
class BufferStats:
    waiting: int
    oldest_read_at_ms: int | None
    newest_seq: int | None
    dropped: int


class ReadingStore:
    """The SQLite file. Every method commits before it returns."""

    def __init__(self, path: Path, max_size: int, max_age_s: float) -> None:
        self._path = path
        self._max_size = max_size
        self._max_age_ms = int(max_age_s * 1000)
        self._appends_since_check = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a commit is exactly
            # where the code says, not wherever the sqlite3 module decides.
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed reading survives a power cut, not only a crash of the process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open the buffer {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def append(self, reading: Reading) -> int:
        """Store ``reading``; returns its sequence number once it is on disk."""
        values = json.dumps(
            [[p.name, p.value, p.unit] for p in reading.values], separators=(",", ":")
        )
        seq = self._write(
            lambda db: (
                db.execute(
                    "INSERT INTO readings (device, read_at_ms, quality, point_values) "
                    "VALUES (?, ?, ?, ?)",
                    (reading.device, reading.read_at_ms, str(reading.quality), values),
                ).lastrowid
            )
        )
        self._appends_since_check += 1
        if self._appends_since_check >= _LIMIT_CHECK_EVERY:
            self.enforce_limits(reading.read_at_ms)
        assert isinstance(seq, int)
        return seq

    def oldest(self, after_seq: int, limit: int) -> list[BufferedReading]:
        """Up to ``limit`` readings with a sequence number above ``after_seq``, oldest first."""
        rows = self._query(
            "SELECT seq, device, read_at_ms, quality, point_values FROM readings "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [_row_to_buffered(row) for row in rows]

    def delete(self, seqs: Iterable[int]) -> None:
        """Forget readings the broker acknowledged."""
        batch = [(seq,) for seq in seqs]
        if batch:
            self._write(lambda db: db.executemany("DELETE FROM readings WHERE seq = ?", batch))

    def stats(self) -> BufferStats:
        waiting, oldest, newest = self._query(
            "SELECT count(*), min(read_at_ms), max(seq) FROM readings", ()
        )[0]
        dropped = self._query("SELECT value FROM counters WHERE name = 'dropped'", ())
        return BufferStats(waiting, oldest, newest, dropped[0][0] if dropped else 0)

    def enforce_limits(self, now_ms: int) -> int:
        """Drop the oldest readings beyond the age limit and while the file is over its size
        limit; count what was dropped. Returns how many were dropped now."""
        self._appends_since_check = 0
        dropped = self._write(
            lambda db: (
                db.execute(
                    "DELETE FROM readings WHERE read_at_ms < ?", (now_ms - self._max_age_ms,)
                ).rowcount
            )
        )
        while self._used_bytes() > self._max_size:
            removed = self._write(
                lambda db: (
                    db.execute(
                        "DELETE FROM readings WHERE seq IN "
                        "(SELECT seq FROM readings ORDER BY seq LIMIT "
                        "max(1, (SELECT count(*) FROM readings) / 20))"
                    ).rowcount
                )
            )
            if removed == 0:
                break
            dropped += removed
        if dropped:
            self._write(
                lambda db: db.execute(
                    "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (dropped,),
                )
            )
            log.warning("buffer over its limits: dropped the %d oldest readings", dropped)
        return int(dropped)

    def _used_bytes(self) -> int:
        ((pages, free, size),) = self._query(
            "SELECT * FROM pragma_page_count, pragma_freelist_count, pragma_page_size", ()
        )
        return int((pages - free) * size)

    def _write(self, action: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = action(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self._path}: {exc}") from exc
        return result

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self._path}: {exc}") from exc


def _row_to_buffered(row: tuple[int, str, int, str, str]) -> BufferedReading:
    """Decode one row. A row that no longer decodes (a damaged file, a row written by another
    version) is a StorageError naming its seq, like any other failure of the buffer, so that
    the forwarder reports it instead of dying on a ValueError."""
    seq, device, read_at_ms, quality, point_values = row
    try:
        values = _decode_points(point_values)
        return BufferedReading(seq, Reading(device, read_at_ms, values, Quality(quality)))
    except (ValueError, TypeError) as exc:  # JSONDecodeError and an unknown Quality included
        raise StorageError(f"buffered reading seq {seq} does not decode: {exc}") from exc


def _decode_points(point_values: str) -> tuple[PointValue, ...]:
    items = json.loads(point_values)
    if not isinstance(items, list):
        raise TypeError(f"point_values is not a list: {point_values[:80]!r}")
    points: list[PointValue] = []
    for item in items:
        match item:
            case [str(name), value, str() | None as unit] if value is None or (
                isinstance(value, int | float) and not isinstance(value, bool)
            ):
                points.append(PointValue(name, value, unit))
            case _:
                raise TypeError(f"not a [name, number or null, unit] triple: {item!r}"[:120])
    return tuple(points)


class Buffer:
    """The store as the event loop sees it: same operations, run on the store's own thread, and
    an event that wakes the forwarder when something new arrives."""

    def __init__(self, store: ReadingStore, thread: ThreadPoolExecutor) -> None:
        self._store = store
        self._thread = thread
        self._appended = asyncio.Event()

    @classmethod
    async def open(cls, path: Path, max_size: int, max_age_s: float) -> Buffer:
        # The connection is made on the thread that will use it for its whole life.
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        try:
            store = await asyncio.get_running_loop().run_in_executor(
                thread, ReadingStore, path, max_size, max_age_s
            )
        except BaseException:
            thread.shutdown()
            raise
        return cls(store, thread)

    async def close(self) -> None:
        await self._run(self._store.close)
        self._thread.shutdown(wait=True)

    async def append(self, reading: Reading) -> int:
        seq = await self._run(self._store.append, reading)
        self._appended.set()
        return seq

    async def oldest(self, after_seq: int, limit: int) -> list[BufferedReading]:
        return await self._run(self._store.oldest, after_seq, limit)

    async def delete(self, seqs: Sequence[int]) -> None:
        await self._run(self._store.delete, seqs)

    async def stats(self) -> BufferStats:
        return await self._run(self._store.stats)

    async def probe(self) -> None:
        """Return once the buffer's thread has run a no-op: it is not stuck (the systemd
        watchdog asks this when no reading arrived to prove it)."""
        await self._run(_nothing)

    async def wait_appended(self, timeout: float) -> None:
        """Return when a reading was appended since the last call, or after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await self._appended.wait()
        except TimeoutError:
            return
        self._appended.clear()

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)


def _nothing() -> None:
    return None
