"""Store-and-forward buffer: every reading is committed to SQLite before its poll counts as done,
and leaves only after the broker acknowledged it.

:class:`ReadingStore` is the synchronous store; it is used from one thread only.
:class:`Buffer` is what the event loop uses: the same operations run on a dedicated thread, so
a slow disk (an SD card's fsync) never blocks polling or MQTT. It commits appends in groups:
every reading submitted within ``commit_delay`` of the first (from any device) goes to disk in
one transaction, and each submitter returns when its group is committed. When the disk fails
(full, I/O error, read-only, locked by another process) readings wait in a bounded memory
queue and are written when it works again; what the bound drops is counted and reported.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import operator
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.backoff import Backoff
from gateway.errors import StorageDeferred, StorageError
from gateway.events import (
    BufferedEvent,
    DeviceDrops,
    DropReason,
    DropTallies,
    EventKind,
    GatewayEvent,
)
from gateway.health import PartHealth
from gateway.readings import (
    BufferedReading,
    Layout,
    PointValue,
    Quality,
    Reading,
    Unsynchronised,
)
from gateway.timekeeping import current_boot_id

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
    -- The values alone, a JSON array in the order of the points of the row's layout (a column
    -- added to older files, see _add_columns), as the wire sends them: a value costs its
    -- digits, not its point's name and unit again. A row written before layouts has no layout
    -- and [name, value, unit] triples here; both are read.
    point_values TEXT NOT NULL
);
-- A layout: the points of a reading, [[name, unit], ...] in their order, stored once and
-- numbered; kept in memory by the store, so appending a reading looks nothing up.
CREATE TABLE IF NOT EXISTS layouts (
    id INTEGER PRIMARY KEY,
    points TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- Events for the fleet that describe data (drops, a replaced file): written in the transaction
-- that made them true, deleted after their PUBACK.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);
-- Rows that no longer decode, moved out of readings (in the transaction that records their
-- event) so that they do not hold up delivery; kept as they were, for a technician.
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    device,
    read_at_ms,
    quality,
    point_values,
    error TEXT NOT NULL,
    quarantined_at_ms INTEGER NOT NULL,
    boot_id TEXT,
    monotonic_ms INTEGER
);
CREATE TABLE IF NOT EXISTS dropped (
    device TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (device, reason)
);
"""

#: How many appended readings between checks of the size and age limits.
_LIMIT_CHECK_EVERY = 256
#: How long a write waits for another process's lock before the buffer counts as failing: the
#: readings then wait in memory instead of every poll stalling for SQLite's default 5 s.
_BUSY_TIMEOUT = 0.5
#: Checkpoint every ~1 MiB of WAL and cut the file back to that, so the WAL of a busy hour does
#: not keep its high-water size on a small filesystem. (SQLite's automatic checkpoint is used
#: only by a store on its own; the Buffer checkpoints off the commit path, see _Checkpointer.)
_WAL_CHECKPOINT_PAGES = 1024
_WAL_SIZE_LIMIT = 1 << 20
#: A checkpoint that could not copy everything (a reader of an old snapshot, such as `fieldgate
#: buffer export`) is tried again once the WAL has grown by this much more, not after every group.
_WAL_RETRY_GROWTH = _WAL_SIZE_LIMIT // 4

#: Incremental vacuum: free pages given back per step (256 KiB: a few ms of work in a delete's
#: transaction), and the span of waiting sequence numbers under which the
#: backlog counts as drained.
_VACUUM_STEP_PAGES = 256
_DRAINED_SPAN = 10_000

#: The database page. Every commit rewrites a few pages besides the rows' own (the last, half
#: filled leaf, the b-tree's interior page, sqlite_sequence, the header, a pointer map page), a
#: page each in the WAL and again at the checkpoint: with SQLite's default 4 KiB, that fixed
#: cost was most of the bytes written per reading. 1 KiB pages still hold a row of ~80 points
#: without an overflow page (measured, 100 meters of 8 points a group: 442 -> 295 bytes
#: written per reading, bench/buffer.py --ingest).
_PAGE_SIZE = 1024

# SQLite's primary result codes (sqlite3.h) that mean the file itself is bad, not the disk.
_SQLITE_CORRUPT = 11
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

_INSERT = (
    "INSERT INTO readings (device, read_at_ms, quality, layout, point_values, boot_id, "
    "monotonic_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# Drop selections. Fixed strings, chosen by the code (no input reaches them).
# Not rows stamped by an unsynchronised clock: their read_at_ms (1970, or a stale saved time)
# says nothing of their age. The size limit still bounds them.
_AGE_SELECTION = "read_at_ms < ? AND boot_id IS NULL"
_SIZE_SELECTION = (
    "seq IN (SELECT seq FROM readings ORDER BY seq LIMIT "
    "max(1, (SELECT count(*) FROM readings) / 20))"
)


@dataclass(frozen=True, slots=True)
class BufferStats:
    waiting: int
    oldest_read_at_ms: int | None
    newest_seq: int | None
    dropped: int
    #: Rows moved to the quarantine table because they no longer decode.
    quarantined: int = 0


class _Damaged(Exception):
    """The file at the buffer's path is not a healthy database of ours."""


class ReadingStore:
    """The SQLite file. Every method commits before it returns.

    A file at ``path`` that is not a database, is damaged (``PRAGMA quick_check``), or is not a
    file at all is moved aside with a timestamp and a fresh database is started in its place;
    :attr:`replaced` then says so, and a ``buffer_replaced`` event waits in the new file.
    """

    def __init__(
        self,
        path: Path,
        max_size: int,
        max_age_s: float,
        *,
        busy_timeout: float = _BUSY_TIMEOUT,
        now_ms: Callable[[], int] | None = None,
        autocheckpoint: bool = True,
        boot_id: str | None = None,
    ) -> None:
        """``autocheckpoint``: SQLite's own checkpoint, run inside the commit that crosses
        the WAL's threshold; False when the caller checkpoints elsewhere (:class:`Buffer`)."""
        self._path = path
        self._max_size = max_size
        self._max_age_ms = int(max_age_s * 1000)
        self._busy_timeout = busy_timeout
        self._autocheckpoint = autocheckpoint
        self._wal = Path(f"{path}-wal")
        #: Size of the -wal file after the last commit (taken on the store's thread, where the
        #: stat costs nothing the event loop would wait for).
        self.wal_bytes = 0
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        #: This boot: its rows stamped before the clock synchronised wait for :meth:`restamp`.
        self.boot_id = boot_id or current_boot_id()
        self._appends_since_check = 0
        self.replaced: GatewayEvent | None = None
        #: Quarantine events not yet taken by the Buffer (appended on the store's thread).
        self.quarantined: collections.deque[GatewayEvent] = collections.deque()
        #: Events committed by this store: the buffer compares it to know when the forwarder
        #: should look (an int, written on the buffer's thread and only read elsewhere).
        self.events_recorded = 0
        #: Free pages given back to the filesystem by incremental vacuum (tests read it).
        self.vacuumed_pages = 0
        #: The file's layouts, both ways (few: one per set of points a device reports).
        self._layout_ids: dict[Layout, int] = {}
        self._layouts: dict[int, Layout] = {}
        self._bad_layouts: dict[int, str] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._connect()
            except _Damaged as exc:
                self._db = self._replace(str(exc))
            self._load_layouts()
        except (sqlite3.Error, OSError) as exc:
            # SQLite says only "unable to open database file"; the technician needs the why.
            hint = "" if os.access(path.parent, os.W_OK) else f" ({path.parent} is not writable)"
            raise StorageError(f"cannot open the buffer {path}: {exc}{hint}") from exc

    def _connect(self) -> sqlite3.Connection:
        path = self._path
        if path.exists() and not path.is_file():
            raise _Damaged(f"{path} is not a regular file")
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a commit is exactly
            # where the code says, not wherever the sqlite3 module decides.
            db = sqlite3.connect(path, isolation_level=None, timeout=self._busy_timeout)
        except sqlite3.Error as exc:
            if path.exists() and exc.sqlite_errorcode == _SQLITE_CANTOPEN:
                raise _Damaged(f"{path} cannot be opened: {exc}{_access_hint(path)}") from exc
            raise
        try:
            # Only take effect on a new file (before its first table); an older file is
            # converted once below. INCREMENTAL: the file gives back the space of a drained
            # backlog in small steps (see _vacuum_step), never in one long VACUUM.
            db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed reading survives a power cut, not only a crash of the process.
            db.execute("PRAGMA synchronous=FULL")
            pages = _WAL_CHECKPOINT_PAGES if self._autocheckpoint else 0
            db.execute(f"PRAGMA wal_autocheckpoint={pages}")
            db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            _quick_check(db)
            db.executescript(_SCHEMA)
            _add_columns(db)
            _convert_file(db, path)
        except sqlite3.Error as exc:
            db.close()
            if exc.sqlite_errorcode in {_SQLITE_CORRUPT, _SQLITE_NOTADB}:
                raise _Damaged(str(exc)) from exc
            raise
        except _Damaged:
            db.close()
            raise
        return db

    def _replace(self, reason: str) -> sqlite3.Connection:
        """Move the damaged file (and its -wal and -shm) aside, start a fresh one that goes on
        numbering after the newest number the old file still tells, and record the event."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self._path.with_name(f"{self._path.name}.damaged-{stamp}")
        first, last = _numbers_in(self._path)
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self._path}{suffix}")
            if source.exists() or source.is_symlink():
                try:
                    source.rename(Path(f"{aside}{suffix}"))
                except OSError as exc:
                    # Left in place, untouched: the buffer stays failing (readings wait in
                    # memory, opening is retried) until someone mends the file or directory.
                    raise StorageError(
                        f"cannot open the buffer {self._path}: {reason}; it cannot be moved "
                        f"aside either ({exc.strerror}: {self._path.parent} is not writable "
                        f"by uid {os.geteuid()})"
                    ) from exc
        log.error(
            "the buffer %s was unusable (%s): moved aside to %s and a new one started; the "
            "readings in it were not sent (rescue them with `fieldgate buffer export --file`)",
            self._path,
            reason,
            aside,
        )
        db = self._connect()
        # Numbers must never be given twice: go on after the old file's newest, or, when it
        # tells nothing, after a number no earlier reading can have had (milliseconds since
        # the epoch times 1000 outgrows any count of readings this box can have made).
        seed = last if last is not None else self._now_ms() * 1000
        event = GatewayEvent(
            EventKind.BUFFER_REPLACED,
            self._now_ms(),
            seq_first=first,
            seq_last=last,
            detail=f"{reason}; moved to {aside.name}",
        )
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('readings', ?)", (seed,))
        db.execute("INSERT INTO events (body) VALUES (?)", (event.to_json(),))
        db.execute("COMMIT")
        self.events_recorded += 1
        self.replaced = event
        return db

    def close(self) -> None:
        self._db.close()

    def append(self, reading: Reading) -> int:
        """Store ``reading``; returns its sequence number once it is on disk."""
        return self.append_many([reading])[0]

    def append_many(
        self, readings: Sequence[Reading], events: Sequence[GatewayEvent] = ()
    ) -> list[int]:
        """Store ``readings`` and ``events`` in one transaction (one fsync); returns the
        readings' sequence numbers once they are on disk."""
        known = self._layout_ids
        #: Layouts first numbered in this transaction: known only once it commits.
        fresh: dict[Layout, int] = {}

        def insert(db: sqlite3.Connection) -> list[int]:
            seqs = []
            for r in readings:
                layout = tuple(map(_name_and_unit, r.values))
                ident = known.get(layout)
                if ident is None:
                    ident = fresh.get(layout)
                    if ident is None:
                        ident = fresh[layout] = _add_layout(db, layout)
                clock = r.unsynchronised
                row = (
                    r.device,
                    r.read_at_ms,
                    r.quality.value,
                    ident,
                    _encode_values(r.values),
                    None if clock is None else clock.boot_id,
                    None if clock is None else clock.monotonic_ms,
                )
                seq = db.execute(_INSERT, row).lastrowid
                assert isinstance(seq, int)
                seqs.append(seq)
            for event in events:
                _record_event(db, event)
            return seqs

        seqs = self._write(insert)
        for layout, ident in fresh.items():
            known[layout] = ident
            self._layouts[ident] = layout
        self.events_recorded += len(events)
        self._appends_since_check += len(readings)
        if self._appends_since_check >= _LIMIT_CHECK_EVERY:
            try:
                self.enforce_limits(max(r.read_at_ms for r in readings))
            except StorageError as exc:
                # The readings are committed: a failed clean-up must not make them look lost.
                log.warning("could not apply the buffer's limits now: %s", exc)
        return seqs

    def oldest(
        self, after_seq: int, limit: int, through_seq: int | None = None
    ) -> list[BufferedReading]:
        """Up to ``limit`` readings with a sequence number above ``after_seq`` (and at most
        ``through_seq``), oldest first. A row that no longer decodes is quarantined on the way
        (see :meth:`quarantine`) and the next rows are read in its place: fewer than ``limit``
        means there are no more (the forwarder relies on that to end a backlog)."""
        through = through_seq if through_seq is not None else 2**63 - 1
        found: list[BufferedReading] = []
        while len(found) < limit:
            wanted = limit - len(found)
            rows = self._query(
                "SELECT seq, device, read_at_ms, quality, layout, point_values, boot_id, "
                "monotonic_ms FROM readings WHERE seq > ? AND seq <= ? "
                # Rows held for the clock in this boot wait for restamp(); an earlier boot's go.
                "AND (boot_id IS NULL OR boot_id != ?) ORDER BY seq LIMIT ?",
                (after_seq, through, self.boot_id, wanted),
            )
            for row in rows:
                try:
                    found.append(_with_clock(self._row_to_buffered(row[:6]), row[6], row[7]))
                except StorageError as exc:
                    self.quarantine(row, str(exc))
            if len(rows) < wanted:
                break
            after_seq = rows[-1][0]
        return found

    def _row_to_buffered(self, row: tuple[Any, ...]) -> BufferedReading:
        """Decode one row (seq, device, read_at_ms, quality, layout, point_values). A row
        that no longer decodes (a damaged file, a row written by another version, a layout
        that is not in the file) is a StorageError naming its seq, like any other failure of
        the buffer, so that the reader quarantines it instead of dying on a ValueError."""
        seq, device, read_at_ms, quality, ident, point_values = row
        try:
            _check_types(device, read_at_ms)
            layout = None if ident is None else self._layout(ident)
            values = decode_point_values(point_values, layout)
            return BufferedReading(seq, Reading(device, read_at_ms, values, Quality(quality)))
        except (ValueError, TypeError) as exc:  # JSONDecodeError and an unknown Quality too
            raise StorageError(f"buffered reading seq {seq} does not decode: {exc}") from exc

    def _layout(self, ident: object) -> Layout:
        if type(ident) is not int:
            raise TypeError(f"layout {ident!r} is not a number")
        layout = self._layouts.get(ident)
        if layout is None:
            # Numbered by another connection since the file was opened (`fieldgate buffer`
            # only reads, but a technician's own tool might write)?
            self._load_layouts()
            layout = self._layouts.get(ident)
            if layout is None:
                why = self._bad_layouts.get(ident, "is not in the layouts table")
                raise ValueError(f"its layout {ident} {why}")
        return layout

    def _load_layouts(self) -> None:
        for ident, points in self._query("SELECT id, points FROM layouts", ()):
            if ident in self._layouts:
                continue
            try:
                layout = parse_layout(points)
            except (ValueError, TypeError) as exc:
                # Its rows are quarantined, with this reason, as they are read.
                self._bad_layouts[ident] = f"does not decode: {exc}"
                continue
            self._layouts[ident] = layout
            self._layout_ids[layout] = ident

    def quarantine(self, row: tuple[Any, ...], error: str) -> None:
        """Move an undecodable row to the quarantine table, count it and record a
        ``quarantined`` event naming its seq, in one transaction: one bad row must not stop
        delivery of everything behind it (on every restart), nor become a silent gap."""
        seq, device, read_at_ms = row[0], row[1], row[2]
        now_ms = self._now_ms()
        # The event may only carry what still has its type; the rest of the row is kept as is.
        devices = (
            (DeviceDrops(device, 1, read_at_ms, read_at_ms),)
            if isinstance(device, str) and isinstance(read_at_ms, int)
            else ()
        )
        event = GatewayEvent(
            EventKind.QUARANTINED,
            now_ms,
            seq_first=seq,
            seq_last=seq,
            devices=devices,
            detail=f"{error}; kept in the quarantine table of {self._path.name}",
        )

        def action(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO quarantine (seq, device, read_at_ms, quality, layout, "
                "point_values, error, quarantined_at_ms, boot_id, monotonic_ms) SELECT seq, "
                "device, read_at_ms, quality, layout, point_values, ?, ?, boot_id, monotonic_ms "
                "FROM readings WHERE seq = ?",
                (error, now_ms, seq),
            )
            db.execute("DELETE FROM readings WHERE seq = ?", (seq,))
            _record_event(db, event)
            db.execute(
                "INSERT INTO counters (name, value) VALUES ('quarantined', 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1"
            )

        self._write(action)
        self.events_recorded += 1
        self.quarantined.append(event)

    def restamp(self, sync_wall_ms: int, sync_monotonic_ms: int) -> int:
        """The wall clock is synchronised: give this boot's held rows their wall time
        (:func:`~gateway.timekeeping.restamped_ms`) in one transaction, which releases them to
        the uplink. Their sequence numbers stay. Returns how many were restamped."""

        def action(db: sqlite3.Connection) -> int:
            return db.execute(
                "UPDATE readings SET read_at_ms = ? - (? - monotonic_ms), boot_id = NULL, "
                "monotonic_ms = NULL WHERE boot_id = ? AND monotonic_ms IS NOT NULL",
                (sync_wall_ms, sync_monotonic_ms, self.boot_id),
            ).rowcount

        return self._write(action)

    def newest_seq(self) -> int:
        """The newest sequence number waiting (0 when none is)."""
        return int(self._query("SELECT coalesce(max(seq), 0) FROM readings", ())[0][0])

    def delete(self, seqs: Iterable[int]) -> None:
        """Forget readings the broker acknowledged: one statement per run of consecutive
        numbers (acknowledgements mostly come in order), not one per reading. Once the backlog
        is drained, a step of the freed space goes back to the filesystem in the same
        transaction."""
        runs = _runs(seqs)
        if runs:

            def action(db: sqlite3.Connection) -> None:
                db.executemany("DELETE FROM readings WHERE seq BETWEEN ? AND ?", runs)
                self.vacuumed_pages += _vacuum_step(db)

            self._write(action)

    def events(self, after_id: int, limit: int) -> list[BufferedEvent]:
        rows = self._query(
            "SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        )
        return [BufferedEvent(row[0], GatewayEvent.from_json(row[1])) for row in rows]

    def delete_events(self, ids: Iterable[int]) -> None:
        batch = [(event_id,) for event_id in ids]
        if batch:
            self._write(lambda db: db.executemany("DELETE FROM events WHERE id = ?", batch))

    def stats(self) -> BufferStats:
        waiting, oldest, newest = self._query(
            "SELECT count(*), min(read_at_ms), max(seq) FROM readings", ()
        )[0]
        counters = dict(self._query("SELECT name, value FROM counters", ()))
        return BufferStats(
            waiting,
            oldest,
            newest,
            counters.get("dropped", 0),
            counters.get("quarantined", 0),
        )

    def dropped_by_device(self) -> dict[tuple[str, str], int]:
        rows = self._query("SELECT device, reason, count FROM dropped", ())
        return {(device, reason): count for device, reason, count in rows}

    def enforce_limits(self, now_ms: int) -> int:
        """Drop the oldest readings beyond the age limit and while the file is over its size
        limit; count what was dropped, per device, and record an event naming the range.
        Returns how many were dropped now."""
        self._appends_since_check = 0
        cutoff = now_ms - self._max_age_ms
        dropped = self._drop(_AGE_SELECTION, (cutoff,), DropReason.MAX_AGE, now_ms)
        while self._used_bytes() > self._max_size:
            removed = self._drop(_SIZE_SELECTION, (), DropReason.MAX_SIZE, now_ms)
            if removed == 0:
                break
            dropped += removed
        if dropped:
            log.warning("buffer over its limits: dropped the %d oldest readings", dropped)
        return dropped

    def _drop(
        self, selection: str, params: tuple[Any, ...], reason: DropReason, now_ms: int
    ) -> int:
        def action(db: sqlite3.Connection) -> int:
            # The selection is one of the fixed strings above; no input reaches it.
            query = (
                "SELECT device, count(*), min(read_at_ms), max(read_at_ms), min(seq), max(seq) "  # noqa: S608
                f"FROM readings WHERE {selection} GROUP BY device ORDER BY device"
            )
            groups = db.execute(
                query,
                params,
            ).fetchall()
            if not groups:
                return 0
            db.execute(f"DELETE FROM readings WHERE {selection}", params)  # noqa: S608
            event = GatewayEvent(
                EventKind.DROPPED,
                now_ms,
                reason,
                seq_first=min(group[4] for group in groups),
                seq_last=max(group[5] for group in groups),
                devices=tuple(DeviceDrops(g[0], g[1], g[2], g[3]) for g in groups),
            )
            _record_event(db, event)
            return event.count

        dropped = self._write(action)
        if dropped:
            self.events_recorded += 1
        return dropped

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
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self.wal_bytes = _size(self._wal)
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                # A failed COMMIT (disk full) leaves the transaction open: end it, or every
                # later BEGIN fails with "cannot start a transaction within a transaction".
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise StorageError(f"buffer {self._path}: {exc}") from exc
        return result

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"buffer {self._path}: {exc}") from exc


def _convert_file(db: sqlite3.Connection, path: Path) -> None:
    """A file made before incremental vacuum (auto_vacuum NONE) or before 1 KiB pages is
    converted by one VACUUM, at start, before any poll waits on it; its rows stay as they are
    (the store reads rows of every format). Without the room for the copy (a nearly full disk),
    or while another process reads the file, it stays as it is and is tried again at the next
    start: it works, it only does not shrink, or writes more bytes per reading."""
    incremental = db.execute("PRAGMA auto_vacuum").fetchone()[0] != 0
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    if incremental and page_size == _PAGE_SIZE:
        return
    try:
        if page_size != _PAGE_SIZE:
            # A file in WAL mode keeps its page size through a VACUUM: leave WAL for the copy
            # (refused, "database is locked", while another connection has the file open).
            db.execute("PRAGMA journal_mode=DELETE").fetchall()
            db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        db.execute("VACUUM")
    except sqlite3.OperationalError as exc:
        log.warning(
            "the buffer %s could not be converted now (tried again at the next start): %s",
            path,
            exc,
        )
    finally:
        db.execute("PRAGMA journal_mode=WAL").fetchall()


def _vacuum_step(db: sqlite3.Connection) -> int:
    """Inside a delete's transaction: when the backlog is drained (what waits spans fewer than
    _DRAINED_SPAN sequence numbers) and the file holds a step's worth of free pages, give one
    step back to the filesystem. While a backlog drains, freed pages are left to be reused by
    new readings instead: moving pages of rows about to be deleted would be wasted writes.
    Returns the pages freed."""
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    if free < _VACUUM_STEP_PAGES:
        return 0
    # Two subqueries: SQLite answers a lone min() or max() of the key from the b-tree's ends,
    # but "SELECT min(seq), max(seq)" scans the table (measured: a 864k backlog then drained
    # at 1,000 msgs/s instead of 5,800).
    low, high = db.execute(
        "SELECT (SELECT min(seq) FROM readings), (SELECT max(seq) FROM readings)"
    ).fetchone()
    if low is not None and high - low >= _DRAINED_SPAN:
        return 0
    # Each step of the statement frees one page, and Python's sqlite3 steps a statement that
    # returns no rows only once (measured: fetchall frees one page, not N): one run per page.
    for _ in range(min(free, _VACUUM_STEP_PAGES)):
        db.execute("PRAGMA incremental_vacuum(1)")
    return int(free - db.execute("PRAGMA freelist_count").fetchone()[0])


def _runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """``numbers`` as (first, last) of each run of consecutive ones, in order."""
    runs: list[tuple[int, int]] = []
    for number in sorted(set(numbers)):
        if runs and runs[-1][1] + 1 == number:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


def _quick_check(db: sqlite3.Connection) -> None:
    check = [row[0] for row in db.execute("PRAGMA quick_check(5)")]
    if check != ["ok"]:
        raise _Damaged(f"quick_check found damage: {'; '.join(check)}")


def _record_event(db: sqlite3.Connection, event: GatewayEvent) -> None:
    db.execute("INSERT INTO events (body) VALUES (?)", (event.to_json(),))
    if event.kind is not EventKind.DROPPED or event.reason is None:
        return
    db.executemany(
        "INSERT INTO dropped (device, reason, count) VALUES (?, ?, ?) "
        "ON CONFLICT(device, reason) DO UPDATE SET count = count + excluded.count",
        [(d.device, str(event.reason), d.count) for d in event.devices],
    )
    db.execute(
        "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
        "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
        (event.count,),
    )


def _numbers_in(path: Path) -> tuple[int | None, int | None]:
    """The oldest waiting and the newest ever given sequence number of a damaged file, as far
    as it still tells them."""
    first: int | None = None
    last: int | None = None
    with contextlib.suppress(sqlite3.Error, OSError, TypeError, ValueError):
        if path.is_file() and os.access(path, os.R_OK):
            uri = f"{path.resolve().as_uri()}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                row = db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'readings'"
                ).fetchone()
                last = int(row[0]) if row else None
                first = db.execute("SELECT min(seq) FROM readings").fetchone()[0]
    return first, last


def _never_openable(path: Path) -> bool:
    """Whether ``path`` lies under something that is not a directory: a mistake in the config
    that no waiting mends (unlike a full or read-only disk, or a mount not there yet)."""
    for parent in path.parents:
        if parent.exists():
            return not parent.is_dir()
    return False


def _access_hint(path: Path) -> str:
    """The usual reason a file that exists cannot be opened: its owner or mode (created by
    root, say, while the service runs as its own user)."""
    if os.access(path, os.R_OK | os.W_OK):
        return ""
    with contextlib.suppress(OSError):
        status = path.stat()
        return (
            f" (it belongs to uid {status.st_uid} with mode {stat.S_IMODE(status.st_mode):o};"
            f" fieldgate runs as uid {os.geteuid()})"
        )
    return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _Checkpointer:
    """PASSIVE checkpoints on a connection and a thread of their own, started after a group
    commit when the WAL has grown past its limit: copying the WAL into the database file (and
    that file's fsync) then never happens inside a commit a poll waits on, nor queues before
    the next group on the buffer's thread. PASSIVE takes no lock a writer needs, so a group
    commit goes on beside it. After a complete checkpoint the next commit starts the WAL again
    from its beginning and cuts the file back to ``journal_size_limit``.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer-checkpoint")
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._tried_at = 0
        self._failing = False
        #: Checkpoints run (the bench and the tests read it).
        self.runs = 0

    def after_commit(self, wal_bytes: int) -> None:
        """On the event loop, after a group commit: start a checkpoint if one is due."""
        if wal_bytes <= _WAL_SIZE_LIMIT:
            self._tried_at = 0  # the WAL was started again: the next growth counts afresh
            return
        if self._task is not None and not self._task.done():
            return
        if self._tried_at and wal_bytes < self._tried_at + _WAL_RETRY_GROWTH:
            return
        self._tried_at = wal_bytes
        self._task = asyncio.create_task(self._run(), name="buffer checkpoint")

    async def _run(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._checkpoint)
        except (sqlite3.Error, OSError) as exc:
            # The WAL only grows meanwhile (bounded by the disk, which the writer's own failure
            # handling covers); tried again after more growth. Logged once per failing spell.
            if not self._failing:
                log.warning("WAL checkpoint of the buffer failed (retried later): %s", exc)
            self._failing = True
        else:
            self._failing = False

    def _checkpoint(self) -> None:
        if self._db is None:
            # mode=rw: never create a file the store does not have (it may be moved aside).
            uri = f"{self._path.resolve().as_uri()}?mode=rw"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=0)
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.runs += 1

    async def close(self) -> None:
        """Before the store closes: the store's close then checkpoints and removes the WAL as
        the last connection."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=True)


def _nothing() -> None:
    return None


#: The types a point's value may have (exactly: JSON's true is a bool, which is an int).
_VALUE_TYPES = (int, float, str, type(None))


#: Made once: json.dumps with arguments builds an encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_value_of = operator.attrgetter("value")
_name_and_unit = operator.attrgetter("name", "unit")


def _encode_values(values: Sequence[PointValue]) -> str:
    """The values as a JSON array that reads back exactly (see _decode_values). orjson
    writes a float as the shortest text that reads back as the same float (as Python does,
    in a tenth of the time), an integer of up to 64 bits and text exactly; it refuses a larger
    integer or text that is not valid UTF-8 and writes NaN and infinity as null. So its text
    is taken only when it holds no null (no None, no NaN, no infinity: a reading of the usual
    kind); the rest goes to Python's encoder, which writes every value exactly (integers of
    any size, NaN and infinity as JSON's extension tokens, read back too)."""
    plain = list(map(_value_of, values))
    try:
        text = orjson.dumps(plain)
    except orjson.JSONEncodeError:
        return _COMPACT.encode(plain)
    if b"null" in text:
        return _COMPACT.encode(plain)
    return text.decode()


def decode_point_values(point_values: object, layout: Layout | None) -> tuple[PointValue, ...]:
    """The points of a stored row: its values with the names and units of its layout, or, in
    a row written before layouts (no layout), its [name, value, unit] triples. ValueError or
    TypeError when they do not decode."""
    if not isinstance(point_values, str):
        raise TypeError(f"point_values {point_values!r} are not text"[:120])
    if layout is None:
        return _decode_points(point_values)
    return _decode_values(point_values, layout)


def _decode_values(point_values: str, layout: Layout) -> tuple[PointValue, ...]:
    values = json.loads(point_values)
    if type(values) is not list or len(values) != len(layout):
        raise TypeError(f"not a list of {len(layout)} values: {point_values[:80]!r}")
    points = []
    for (name, unit), value in zip(layout, values, strict=True):
        if type(value) not in _VALUE_TYPES:
            raise TypeError(f"{value!r} is not a number, text or null"[:120])
        points.append(PointValue(name, value, unit))
    return tuple(points)


def _add_layout(db: sqlite3.Connection, layout: Layout) -> int:
    points = _COMPACT.encode(layout)
    db.execute("INSERT OR IGNORE INTO layouts (points) VALUES (?)", (points,))
    (ident,) = db.execute("SELECT id FROM layouts WHERE points = ?", (points,)).fetchone()
    return int(ident)


def parse_layout(points: object) -> Layout:
    """A layout as the layouts table keeps it (see _SCHEMA)."""
    if not isinstance(points, str):
        raise TypeError(f"points {points!r} are not text")
    layout = []
    for item in json.loads(points):
        match item:
            case [str(name), str() | None as unit]:
                layout.append((name, unit))
            case _:
                raise TypeError(f"not a [name, unit] pair: {item!r}"[:120])
    return tuple(layout)


def _add_columns(db: sqlite3.Connection) -> None:
    """Older files get the columns added since, in the readings and in the quarantine (so a
    quarantined row keeps what dates and describes it): the columns of held readings (NULL:
    stamped by a synchronised clock) and the layout (NULL: a row of [name, value, unit]
    triples). Adding a column rewrites no row; idempotent, so every open runs it."""
    for table in ("readings", "quarantine"):
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column, kind in (
            ("boot_id", "TEXT"),
            ("monotonic_ms", "INTEGER"),
            ("layout", "INTEGER"),
        ):
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def _with_clock(
    buffered: BufferedReading, boot_id: object, monotonic_ms: object
) -> BufferedReading:
    """A row still carrying a monotonic stamp here is from a boot that ended before its clock
    synchronised: it goes flagged, its ``read_at_ms`` the best guess there is."""
    if not isinstance(boot_id, str) or not isinstance(monotonic_ms, int):
        return buffered
    reading = dataclasses.replace(
        buffered.reading, unsynchronised=Unsynchronised(boot_id, monotonic_ms)
    )
    return BufferedReading(buffered.seq, reading)


def _check_types(device: object, read_at_ms: object) -> None:
    # SQLite keeps whatever type was written: a text time would fail only later, in the dialect.
    if not isinstance(device, str) or not isinstance(read_at_ms, int):
        raise TypeError(f"device {device!r} or read time {read_at_ms!r} has the wrong type")


def _decode_points(point_values: str) -> tuple[PointValue, ...]:
    """A row written before layouts: [name, value, unit] triples."""
    items = json.loads(point_values)
    if not isinstance(items, list):
        raise TypeError(f"point_values is not a list: {point_values[:80]!r}")
    points: list[PointValue] = []
    for item in items:
        match item:
            case [str(name), value, str() | None as unit] if value is None or (
                isinstance(value, int | float | str) and not isinstance(value, bool)
            ):
                points.append(PointValue(name, value, unit))
            case _:
                raise TypeError(f"not a [name, number, text or null, unit] triple: {item!r}"[:120])
    return tuple(points)


#: Committed readings kept for the uplink to take without reading them back (see
#: Buffer.oldest): a few seconds of a large site; beyond it the uplink reads the file.
_RECENT_MAX = 1024

#: Condition events held in memory for the uplink; beyond this the oldest go (they describe
#: transitions, and the newest says how things are now).
_VOLATILE_EVENTS_MAX = 64


class Buffer:
    """The store as the event loop sees it: group commit, the memory queue while the disk
    fails, and an event that wakes the forwarder when something new is on disk.

    All SQLite work runs on the store's own thread. The group's delay and the retry waits use
    the event loop's own time, not the injected clock: they are latencies of the disk path, not
    a schedule a test steps through.
    """

    def __init__(
        self,
        thread: ThreadPoolExecutor,
        opener: Callable[[], ReadingStore],
        store: ReadingStore | None,
        *,
        commit_delay: float,
        memory_queue: int,
        storing: PartHealth,
        checkpointer: _Checkpointer | None = None,
    ) -> None:
        self._thread = thread
        self._checkpointer = checkpointer
        self._opener = opener
        self._store = store
        self._commit_delay = commit_delay
        self._memory_queue = memory_queue
        self.storing = storing
        self._appended = asyncio.Event()
        #: This boot's id, which held readings are stamped with (set by :meth:`open`).
        self.boot_id = ""
        #: Restamps that released held rows: the forwarder reads again behind its cursors.
        self.released = 0
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        #: Submitted, waiting for the next group commit; each with its submitter's future.
        self._pending: list[tuple[Reading, asyncio.Future[int]]] = []
        #: Readings submitted, and those a finished group commit has written or held: what
        #: :meth:`settled` compares (a submitter's future may be cancelled before its commit).
        self._submitted = 0
        self._accounted = 0
        self._progress = asyncio.Condition()
        #: Submitted while the disk failed: already answered (not durable), oldest first.
        self._held: collections.deque[Reading] = collections.deque()
        self._memory_drops = DropTallies()
        self._volatile: collections.deque[GatewayEvent] = collections.deque(
            maxlen=_VOLATILE_EVENTS_MAX
        )
        self._failing_since: float | None = None
        self._retry = Backoff(base=0.2, cap=5.0)
        #: Readings the memory bound dropped, ever (health and the CLI read it).
        self.memory_dropped = 0
        #: Group commits done, and readings they held (the bench reads them).
        self.groups_committed = 0
        self.readings_committed = 0
        #: Called on the loop with how many submitted readings each commit stored (not those
        #: held in memory before it): counted where they are durable, not by their submitters,
        #: whom a stop may cancel after the commit and before they hear of it.
        self.on_stored: Callable[[int], None] | None = None
        #: The newest sequence number this buffer's commits gave (0 before the first).
        self.newest_given = 0
        self._flusher: asyncio.Task[None] | None = None
        #: The newest committed readings, for the uplink to take without reading them back
        #: (see :meth:`oldest`); every readable row from ``_recent_from`` on is in it.
        self._recent: collections.deque[BufferedReading] = collections.deque()
        self._recent_from: int | None = None
        #: The seq the next commit gives when no one else writes to the file.
        self._recent_next: int | None = None
        self._recent_store: ReadingStore | None = None
        self._recent_events = 0
        self._events_check = True
        self._events_seen = 0

    @classmethod
    async def open(
        cls,
        path: Path,
        max_size: int,
        max_age_s: float,
        *,
        commit_delay: float = 0.01,
        memory_queue: int = 10_000,
        storing: PartHealth | None = None,
        background_checkpoint: bool = True,
        boot_id: str | None = None,
    ) -> Buffer:
        """Open the buffer. A file that cannot be opened at all (a read-only or full disk)
        does not stop the gateway: readings wait in memory and opening is retried. A path
        under a regular file is a StorageError: nothing but a config change mends it.
        ``background_checkpoint`` False leaves WAL checkpoints inside commits, as SQLite does
        by itself (only for bench/buffer.py's comparison)."""
        storing = storing or PartHealth(
            "storing readings in the buffer", "new readings wait in memory, up to a bound"
        )
        # The connection is made on the thread that will use it for its whole life.
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")

        boot = boot_id or current_boot_id()

        def opener() -> ReadingStore:
            return ReadingStore(
                path, max_size, max_age_s, autocheckpoint=not background_checkpoint, boot_id=boot
            )

        try:
            store: ReadingStore | None = await asyncio.get_running_loop().run_in_executor(
                thread, opener
            )
        except StorageError as exc:
            if _never_openable(path):
                thread.shutdown()
                raise
            store = None
            error = str(exc)
        except BaseException:
            thread.shutdown()
            raise
        buffer = cls(
            thread,
            opener,
            store,
            commit_delay=commit_delay,
            memory_queue=memory_queue,
            storing=storing,
            checkpointer=_Checkpointer(path) if background_checkpoint else None,
        )
        buffer.boot_id = boot
        if store is None:
            buffer._failed(error)
            buffer._wake.set()  # the writer retries opening, with backoff
        buffer._flusher = asyncio.create_task(buffer._flush_until_closed(), name="buffer writer")
        return buffer

    @property
    def replaced(self) -> GatewayEvent | None:
        return None if self._store is None else self._store.replaced

    @property
    def is_open(self) -> bool:
        return self._store is not None

    @property
    def held(self) -> int:
        """Readings waiting in memory for the disk."""
        return len(self._held)

    async def close(self) -> None:
        """Write what is pending (one last try if the disk fails), then close the file."""
        self._closing.set()
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        lost = len(self._held) + len(self._pending)
        if lost:
            log.error(
                "stopping with %d reading(s) held in memory that the disk did not take: "
                "they are lost",
                lost,
            )
        if self._checkpointer is not None:
            await self._checkpointer.close()
        if self._store is not None:
            await self._run(self._store.close)
        self._thread.shutdown(wait=True)

    async def append(self, reading: Reading) -> int:
        """Store ``reading`` with the next group; returns its sequence number once the group
        is on disk. Raises :class:`StorageDeferred` at once while the disk fails: the reading
        then waits in memory (or is counted as dropped beyond the bound)."""
        if self._failing_since is not None:
            self._hold(reading)
            raise StorageDeferred(f"{self.storing.last_error}; the reading waits in memory")
        if self._closing.is_set() and self._flusher is not None and self._flusher.done():
            raise StorageError("the buffer is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((reading, future))
        self._submitted += 1
        self._wake.set()
        # Not shielded (a shield costs a future and a loop step per reading): a submitter
        # cancelled meanwhile cancels only its future; the reading stays in the group, and the
        # writer skips futures already done.
        return await future

    async def settled(self) -> int:
        """Once every reading submitted so far is committed (or held in memory: the disk
        failed): :attr:`newest_given`. On a stop, the pollers' last readings."""
        submitted = self._submitted
        async with self._progress:
            await self._progress.wait_for(
                lambda: (
                    self._accounted >= submitted or self._flusher is None or self._flusher.done()
                )
            )
        return self.newest_given

    async def oldest(
        self, after_seq: int, limit: int, through_seq: int | None = None
    ) -> list[BufferedReading]:
        """See :meth:`ReadingStore.oldest`. The live readings the uplink asks for (newer
        than ``after_seq``, no ``through_seq``) come from memory when every one of them is
        still there: committed, in seq order, the same rows the file would give back, without
        reading and decoding them again on the buffer's thread."""
        if through_seq is None:
            recent = self._recent_after(after_seq, limit)
            if recent is not None:
                return recent
        return await self._on_store(lambda s: s.oldest(after_seq, limit, through_seq))

    def _recent_after(self, after_seq: int, limit: int) -> list[BufferedReading] | None:
        if not self._recent_valid():
            self._forget_recent()
            return None
        if self._recent_from is None or after_seq + 1 < self._recent_from:
            return None
        recent = self._recent
        while recent and recent[0].seq <= after_seq:
            recent.popleft()  # taken already: the uplink reads forward only
        self._recent_from = after_seq + 1
        return [recent[i] for i in range(min(limit, len(recent)))]

    def _remember(self, seqs: Sequence[int], readings: Sequence[Reading]) -> None:
        """After a commit: keep its readings for :meth:`oldest` (at most _RECENT_MAX)."""
        if not self._recent_valid():
            # An event was recorded (rows dropped by the limits, maybe some of these) or the
            # file is another: start again with the next commit; until then the file serves.
            self._forget_recent()
            self._recent_store = self._store
            self._recent_events = self._store.events_recorded if self._store else 0
            return
        if not seqs:
            return
        if self._recent_next != seqs[0]:
            # A number was given outside this buffer's commits (another process wrote a row):
            # from here on only; the file serves what lies before.
            self._forget_recent()
            self._recent_from = seqs[0]
        self._recent_next = seqs[-1] + 1
        for seq, reading in zip(seqs, readings, strict=True):
            # Held for the clock in this boot: the file does not give them out either.
            if reading.unsynchronised is None or reading.unsynchronised.boot_id != self.boot_id:
                self._recent.append(BufferedReading(seq, reading))
        while len(self._recent) > _RECENT_MAX:
            self._recent_from = self._recent.popleft().seq + 1

    def _recent_valid(self) -> bool:
        """Whether nothing but appends and the uplink's own deletes changed the rows since
        the memory copy began: the same store, and no event recorded in it since."""
        store = self._store
        return (
            store is not None
            and store is self._recent_store
            and store.events_recorded == self._recent_events
        )

    def _forget_recent(self) -> None:
        self._recent.clear()
        self._recent_from = None
        self._recent_next = None

    async def restamp(self, sync_wall_ms: int, sync_monotonic_ms: int) -> int:
        """See :meth:`ReadingStore.restamp`; wakes the forwarder when rows were released."""
        count = await self._on_store(lambda s: s.restamp(sync_wall_ms, sync_monotonic_ms))
        if count:
            self.released += 1
            self._appended.set()
        return count

    async def newest_seq(self) -> int:
        return await self._on_store(lambda s: s.newest_seq())

    async def delete(self, seqs: Sequence[int]) -> None:
        await self._on_store(lambda s: s.delete(seqs))
        self._after_commit()

    def take_quarantined(self) -> list[GatewayEvent]:
        """Quarantine events since the last call (their rows were moved by :meth:`oldest`), for
        the caller to report; the same events wait on disk for the uplink."""
        store = self._store
        taken: list[GatewayEvent] = []
        while store is not None and store.quarantined:
            taken.append(store.quarantined.popleft())
        return taken

    def take_event_check(self) -> bool:
        """Whether an event may have arrived since the last call (then the forwarder looks)."""
        seen = self._store.events_recorded if self._store else 0
        due = self._events_check or seen != self._events_seen or bool(self._volatile)
        self._events_seen = seen
        self._events_check = False
        return due

    async def events(self, after_id: int, limit: int) -> list[BufferedEvent]:
        """Stored events after ``after_id`` (oldest first), then those held in memory (taken:
        the caller gives back with :meth:`give_back` those it could not deliver)."""
        stored = await self._on_store(lambda s: s.events(after_id, limit)) if self._store else []
        volatile = [BufferedEvent(None, event) for event in self._volatile]
        self._volatile.clear()
        return stored + volatile

    def take_held_events(self) -> list[BufferedEvent]:
        """The events held in memory alone (taken, as by :meth:`events`): they need no disk,
        so they can go while the file refuses every write."""
        held = [BufferedEvent(None, event) for event in self._volatile]
        self._volatile.clear()
        return held

    def give_back(self, events: Iterable[GatewayEvent]) -> None:
        """Memory events taken with :meth:`events` and not acknowledged, to be sent again."""
        self._volatile.extendleft(reversed(list(events)))

    async def delete_events(self, ids: Sequence[int]) -> None:
        await self._on_store(lambda s: s.delete_events(ids))

    async def stats(self) -> BufferStats:
        return await self._on_store(lambda s: s.stats())

    async def probe(self) -> None:
        """Returns once the buffer's thread has run a step: evidence for the systemd watchdog
        that SQLite is not stuck (a failing disk answers too: it is reported, not stuck)."""
        await self._run(_nothing)

    async def wait_appended(self, timeout: float) -> None:
        """Return when a reading was appended since the last call, or after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                await self._appended.wait()
        except TimeoutError:
            return
        self._appended.clear()

    async def _on_store(self, operation: Callable[[ReadingStore], _T]) -> _T:
        store = self._store
        if store is None:
            raise StorageError(f"the buffer is not open: {self.storing.last_error}")
        return await self._run(operation, store)

    @property
    def checkpoints(self) -> int:
        """Background WAL checkpoints run (the bench and the tests read it)."""
        return 0 if self._checkpointer is None else self._checkpointer.runs

    def _after_commit(self) -> None:
        if self._checkpointer is not None and self._store is not None:
            self._checkpointer.after_commit(self._store.wal_bytes)

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    # The writer.

    async def _flush_until_closed(self) -> None:
        while True:
            await self._wake.wait()
            if self._failing_since is None and not self._closing.is_set():
                # The group: whatever else is submitted in this short while rides along.
                await asyncio.sleep(self._commit_delay)
            self._wake.clear()
            taken = len(self._pending)
            written = await self._flush()
            # Written or held in memory: either way this group is no longer waited for.
            self._accounted += taken
            async with self._progress:
                self._progress.notify_all()
            if self._closing.is_set():
                if written and self._pending:
                    continue  # submitted while the last group was written
                return
            if not written:
                await self._wait_to_retry()

    async def _wait_to_retry(self) -> None:
        delay = self._retry.failed(time.monotonic())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing.wait()
        self._wake.set()

    async def _flush(self) -> bool:
        """Write what is held and pending, in one transaction; False if the disk failed."""
        group, self._pending = self._pending, []
        writing = list(self._held)
        self._held.clear()
        drops, self._memory_drops = self._memory_drops, DropTallies()
        events = []
        if drops.total:
            events.append(
                GatewayEvent(
                    EventKind.DROPPED,
                    int(time.time() * 1000),
                    DropReason.MEMORY_BOUND,
                    devices=drops.devices(),
                    detail="dropped from memory while the disk failed; never numbered",
                )
            )
        batch = writing + [reading for reading, _ in group]
        if not batch and not events and self._store is not None:
            return True  # a file not yet open is tried even with nothing to write
        try:
            if self._store is None:
                self._store = await self._run(self._opener)
            seqs = await self._run(self._store.append_many, batch, events)
        except Exception as exc:  # noqa: BLE001 - any failure of the disk path holds the readings
            error = str(exc) if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
            self._forget_recent()
            self._unwritten(writing, group, drops, error)
            return False
        self._remember(seqs, batch)
        if seqs:
            self.newest_given = seqs[-1]
        for (_, future), seq in zip(group, seqs[len(writing) :], strict=True):
            if not future.done():
                future.set_result(seq)
        self.groups_committed += 1
        self.readings_committed += len(batch)
        if self.on_stored is not None and group:
            self.on_stored(len(group))
        self._after_commit()
        self._appended.set()
        if self._failing_since is not None:
            self._recovered(len(writing), drops.total)
        return True

    def _unwritten(
        self,
        writing: list[Reading],
        group: list[tuple[Reading, asyncio.Future[int]]],
        drops: DropTallies,
        error: str,
    ) -> None:
        # Oldest first: what was held, this group, then what was held while writing.
        newer = list(self._held)
        self._held.clear()
        self._held.extend(writing)
        self._held.extend(reading for reading, _ in group)
        self._held.extend(newer)
        drops.merge(self._memory_drops)
        self._memory_drops = drops
        self._enforce_memory_bound()
        self._failed(error)
        for _, future in group:
            if not future.done():
                future.set_exception(StorageDeferred(f"{error}; the reading waits in memory"))

    def _hold(self, reading: Reading) -> None:
        self._held.append(reading)
        self._enforce_memory_bound()

    def _enforce_memory_bound(self) -> None:
        while len(self._held) > self._memory_queue:
            dropped = self._held.popleft()
            self._memory_drops.add(dropped.device, dropped.read_at_ms)
            self.memory_dropped += 1
            if self.memory_dropped == 1 or self.memory_dropped % 1000 == 0:
                log.warning(
                    "the memory queue is full (%d readings): dropping the oldest; %d dropped "
                    "so far (counted per device, reported upstream once the disk works)",
                    self._memory_queue,
                    self.memory_dropped,
                )

    def _failed(self, error: str) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self._volatile.append(
                GatewayEvent(EventKind.BUFFER_FAILING, int(time.time() * 1000), detail=error)
            )
        self.storing.failed(error)

    def _recovered(self, written: int, dropped: int) -> None:
        since = self._failing_since or time.monotonic()
        self._failing_since = None
        self._retry.succeeded()
        self._volatile.append(
            GatewayEvent(
                EventKind.BUFFER_RECOVERED,
                int(time.time() * 1000),
                detail=(
                    f"failing for {time.monotonic() - since:.0f} s after "
                    f"{self.storing.last_error}; {written} reading(s) held in memory written, "
                    f"{dropped} dropped by the memory bound"
                ),
            )
        )
        self.storing.recovered()
