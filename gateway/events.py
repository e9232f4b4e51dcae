"""Gateway events: what the buffer tells the fleet about itself, beside the readings. A dropped
range of readings (size or age limit, the memory bound while the disk failed), the buffer
failing and working again, a damaged database file moved aside, a row that no longer decodes
quarantined. A drop is never a silent gap.

Events that describe data (drops, a replaced file, a quarantined row) are stored in the
buffer's ``events`` table in the same transaction as the change they describe and leave it only
after the broker's PUBACK, like readings. Events about a condition of the disk itself are held
in memory (the disk is what fails) and sent as soon as the uplink can.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    DROPPED = "dropped"
    BUFFER_FAILING = "buffer_failing"
    BUFFER_RECOVERED = "buffer_recovered"
    BUFFER_REPLACED = "buffer_replaced"
    #: A buffered reading that no longer decodes was moved to the ``quarantine`` table (kept
    #: for a technician, not sent) so that it does not hold up everything behind it.
    QUARANTINED = "quarantined"


class DropReason(StrEnum):
    MAX_SIZE = "max_size"
    MAX_AGE = "max_age"
    #: The disk failed and the readings waiting in memory were more than ``memory_queue``.
    MEMORY_BOUND = "memory_bound"


@dataclass(frozen=True, slots=True)
class DeviceDrops:
    """What one device lost in one drop."""

    device: str
    count: int
    first_read_at_ms: int
    last_read_at_ms: int


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    kind: EventKind
    at_ms: int
    reason: DropReason | None = None
    #: The sequence numbers dropped lie in ``seq_first..seq_last`` (those of the range that were
    #: delivered before are not in it). None for readings dropped from memory: they never had
    #: a number (numbers are given on disk, so that none is ever given twice).
    seq_first: int | None = None
    seq_last: int | None = None
    devices: tuple[DeviceDrops, ...] = ()
    detail: str | None = None

    @property
    def count(self) -> int:
        return sum(drops.count for drops in self.devices)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": str(self.kind),
                "at_ms": self.at_ms,
                "reason": None if self.reason is None else str(self.reason),
                "seq_first": self.seq_first,
                "seq_last": self.seq_last,
                "devices": [
                    [d.device, d.count, d.first_read_at_ms, d.last_read_at_ms] for d in self.devices
                ],
                "detail": self.detail,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> GatewayEvent:
        data: dict[str, Any] = json.loads(text)
        reason = data.get("reason")
        return cls(
            kind=EventKind(data["kind"]),
            at_ms=int(data["at_ms"]),
            reason=None if reason is None else DropReason(reason),
            seq_first=data.get("seq_first"),
            seq_last=data.get("seq_last"),
            devices=tuple(
                DeviceDrops(str(d), int(n), int(first), int(last))
                for d, n, first, last in data.get("devices", [])
            ),
            detail=data.get("detail"),
        )


@dataclass(frozen=True, slots=True)
class BufferedEvent:
    """An event as the forwarder gets it. ``event_id`` is the stored event's id (deleted after
    its PUBACK), or None for an event held in memory only."""

    event_id: int | None
    event: GatewayEvent


@dataclass(slots=True)
class DropTally:
    """Drops of one device being counted before they become an event."""

    count: int = 0
    first_read_at_ms: int = 0
    last_read_at_ms: int = 0

    def add(self, read_at_ms: int) -> None:
        if self.count == 0 or read_at_ms < self.first_read_at_ms:
            self.first_read_at_ms = read_at_ms
        self.last_read_at_ms = max(self.last_read_at_ms, read_at_ms)
        self.count += 1


@dataclass(slots=True)
class DropTallies:
    by_device: dict[str, DropTally] = field(default_factory=dict)

    def merge(self, other: DropTallies) -> None:
        for device, theirs in other.by_device.items():
            mine = self.by_device.get(device)
            if mine is None or mine.count == 0:
                self.by_device[device] = DropTally(
                    theirs.count, theirs.first_read_at_ms, theirs.last_read_at_ms
                )
            else:
                mine.count += theirs.count
                mine.first_read_at_ms = min(mine.first_read_at_ms, theirs.first_read_at_ms)
                mine.last_read_at_ms = max(mine.last_read_at_ms, theirs.last_read_at_ms)

    def add(self, device: str, read_at_ms: int) -> None:
        self.by_device.setdefault(device, DropTally()).add(read_at_ms)

    @property
    def total(self) -> int:
        return sum(t.count for t in self.by_device.values())

    def devices(self) -> tuple[DeviceDrops, ...]:
        return tuple(
            DeviceDrops(name, t.count, t.first_read_at_ms, t.last_read_at_ms)
            for name, t in sorted(self.by_device.items())
        )
