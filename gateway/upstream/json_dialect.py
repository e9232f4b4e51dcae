"""fieldgate's JSON dialect: a retained JSON status (birth, will, goodbye), a retained
description per device, and one compact JSON message per device poll.

What never changes while a config runs (units, the device's template, manufacturer and model,
the order of its points) goes once into the device's retained description; a reading carries
its values as an array in the description's point order and the description's ``layout`` id.
So a value costs its digits and a comma on the wire, not its name and unit again.

Every message carries ``"schema": SCHEMA_VERSION``. Documented in README.md ("Topics and
payload") and as JSON Schema in docs/ (status, description, payload, event, health,
command-result); change them together (tests/test_dialect.py checks the payloads against the
schemas, and tests/wire.py checks every message the broker tests receive).
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from gateway.descriptions import Descriptions
from gateway.events import BufferedEvent
from gateway.health import HealthReport
from gateway.readings import BufferedReading, DeviceInfo, Layout, PointInfo
from gateway.upstream.messages import OutgoingMessage

#: The version of every message's layout; docs/*.schema.json pin it with ``const``. Version 1
#: was the first dialect (plain ``online``/``offline`` status, values with their units).
SCHEMA_VERSION = 2


def iso_utc_ms(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``: the timestamp format of the wire payload."""
    seconds, millis = divmod(epoch_ms, 1000)
    return f"{_iso_second(seconds)}.{millis:03d}Z"


@functools.lru_cache(maxsize=64)
def _iso_second(epoch_s: int) -> str:
    # The readings of one poll slot share their second: formatted once, not once a reading.
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def to_json(message: Mapping[str, object]) -> bytes:
    """Compact. orjson writes a reading in a fifteenth of the stdlib's time; it writes a NaN
    or an infinity as null (reading_from_values already made those null, with the reading's
    quality partial), never as invalid JSON. An integer beyond 64 bits, which orjson refuses,
    is written by the stdlib's encoder."""
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What the birth tells the fleet about this gateway and the config it runs."""

    version: str
    #: ``sha256:<hex>`` of the normalised config (see GatewayConfig.config_hash).
    config_hash: str
    started_ms: int
    devices: tuple[DeviceInfo, ...] = ()


_name_and_unit = operator.attrgetter("name", "unit")


def layout_id(layout: Layout) -> str:
    """A short, stable name of a layout: the same points and units always give the same id, on
    every gateway and across restarts, so the fleet may keep descriptions by id."""
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:8]


class JsonDialect:
    """Topics ``<prefix>/<gateway>/status``, ``…/events``, ``…/health``,
    ``…/devices/<device>/description`` and ``…/devices/<device>/reading``."""

    def __init__(
        self,
        topic_prefix: str,
        gateway_id: str,
        info: GatewayInfo,
        descriptions: Descriptions | None = None,
    ) -> None:
        """``descriptions``: the devices' descriptions as they are now (the config's, completed
        by what the devices say of themselves); by default ``info``'s devices as configured."""
        self._prefix = topic_prefix
        self._gateway_id = gateway_id
        self._info = info
        self._devices = descriptions or Descriptions(info.devices)
        #: Layouts seen, with their ids (hashed once each, not per reading).
        self._layout_ids: dict[Layout, str] = {}
        #: Device -> the layout id and the description sent with it since the last birth.
        self._described: dict[str, tuple[str, DeviceInfo | None]] = {}
        #: The last reading's layout: description() and then reading() ask for the same one.
        self._last_layout: tuple[BufferedReading, Layout, str] | None = None

    @property
    def gateway_id(self) -> str:
        return self._gateway_id

    @property
    def status_topic(self) -> str:
        return f"{self._prefix}/{self._gateway_id}/status"

    @property
    def event_topic(self) -> str:
        return f"{self._prefix}/{self._gateway_id}/events"

    @property
    def health_topic(self) -> str:
        return f"{self._prefix}/{self._gateway_id}/health"

    def reading_topic(self, device: str) -> str:
        return f"{self._prefix}/{self._gateway_id}/devices/{device}/reading"

    def description_topic(self, device: str) -> str:
        return f"{self._prefix}/{self._gateway_id}/devices/{device}/description"

    def _status(self, state: str) -> dict[str, object]:
        return {"schema": SCHEMA_VERSION, "gateway": self._gateway_id, "state": state}

    def will(self) -> OutgoingMessage:
        # Retained, as birth and goodbye are: a subscriber arriving later still learns the state.
        return OutgoingMessage(self.status_topic, to_json(self._status("offline")), retain=True)

    def birth(self) -> OutgoingMessage:
        """The retained ``online`` status with who this gateway is. A new session starts here:
        each device's description is sent again before its next reading."""
        self._described.clear()
        info = self._info
        message = self._status("online") | {
            "version": info.version,
            "config": info.config_hash,
            "started": iso_utc_ms(info.started_ms),
            "devices": [_device_entry(device) for device in info.devices],
        }
        return OutgoingMessage(self.status_topic, to_json(message), retain=True)

    def goodbye(self) -> OutgoingMessage:
        return OutgoingMessage(self.status_topic, to_json(self._status("offline")), retain=True)

    def _layout_id(self, buffered: BufferedReading) -> tuple[Layout, str]:
        last = self._last_layout
        if last is not None and last[0] is buffered:
            return last[1], last[2]
        layout: Layout = tuple(map(_name_and_unit, buffered.reading.values))
        known = self._layout_ids.get(layout)
        if known is None:
            known = self._layout_ids[layout] = layout_id(layout)
        self._last_layout = (buffered, layout, known)
        return layout, known

    def description(self, buffered: BufferedReading) -> OutgoingMessage | None:
        """The retained description the fleet needs to read this reading, when this session
        has not sent it yet (the device's first reading, or its points changed: a reload, a
        replayed reading from an older config); ``None`` otherwise. Publish it first."""
        device = buffered.reading.device
        layout, ident = self._layout_id(buffered)
        info = self._devices.get(device)
        sent = self._described.get(device)
        # The same object: Descriptions makes a new one only when the device's changed.
        if sent is not None and sent[0] == ident and sent[1] is info:
            return None
        self._described[device] = (ident, info)
        configured: dict[str, PointInfo] = {p.name: p for p in info.points} if info else {}
        message: dict[str, object] = {
            "schema": SCHEMA_VERSION,
            "gateway": self._gateway_id,
            "device": device,
        }
        if info is not None:
            message |= _device_entry(info)
            del message["name"]
        message["layout"] = ident
        message["points"] = [
            _point_entry(name, unit, configured.get(name)) for name, unit in layout
        ]
        return OutgoingMessage(self.description_topic(device), to_json(message), retain=True)

    def reading(self, buffered: BufferedReading, *, historical: bool = False) -> OutgoingMessage:
        reading = buffered.reading
        _layout, ident = self._layout_id(buffered)
        message: dict[str, object] = {
            "schema": SCHEMA_VERSION,
            "gateway": self._gateway_id,
            "device": reading.device,
            "seq": buffered.seq,
            "ts": iso_utc_ms(reading.read_at_ms),
            "quality": str(reading.quality),
            "layout": ident,
            "values": [point.value for point in reading.values],
        }
        if historical:
            # Only when true: a live reading carries no byte for it.
            message["historical"] = True
        if reading.unsynchronised is not None:
            # Taken before the clock synchronised, on a boot that ended before it did: ts is
            # the clock's guess then, which nothing can correct now.
            message["time"] = "unsynchronised"
        return OutgoingMessage(self.reading_topic(reading.device), to_json(message))

    def health(self, report: HealthReport) -> OutgoingMessage:
        """The periodic health message (retained: the latest figures for whoever looks)."""
        devices: dict[str, object] = {}
        for device in report.devices:
            entry: dict[str, object] = {
                "up": device.up,
                "last_success": _iso_or_none(device.last_success_ms),
                "polls_ok": device.polls_ok,
                "polls_failed": device.polls_failed,
                "driver_faults": device.driver_faults,
                "cycles_skipped": device.cycles_skipped,
            }
            if device.last_error is not None:
                entry["error"] = device.last_error
            devices[device.device] = entry
        message: dict[str, object] = {
            "schema": SCHEMA_VERSION,
            "gateway": self._gateway_id,
            "ts": iso_utc_ms(report.at_ms),
            "devices": devices,
            "buffer": {
                "storing": report.storing_up,
                "waiting": report.waiting,
                "oldest_ts": _iso_or_none(report.oldest_read_at_ms),
                "dropped": report.dropped,
                "quarantined": report.quarantined,
                "lost": report.readings_lost,
            },
            "buses": {
                name: {
                    "requests": counts.requests,
                    "timeouts": counts.timeouts,
                    "errors": counts.crc_errors
                    + counts.malformed
                    + counts.late_answers
                    + counts.exceptions,
                }
                for name, counts in report.buses
            },
            "uplink": {
                "reconnects": report.uplink_reconnects,
                "failures": report.uplink_failures,
                "acknowledged": report.published,
                "publish_latency_sum_s": round(report.publish_latency_sum, 3),
            },
        }
        return OutgoingMessage(self.health_topic, to_json(message), retain=True)

    def event(self, buffered: BufferedEvent) -> OutgoingMessage:
        event = buffered.event
        message: dict[str, object] = {
            "schema": SCHEMA_VERSION,
            "gateway": self._gateway_id,
            "event": str(event.kind),
            "ts": iso_utc_ms(event.at_ms),
        }
        if buffered.event_id is not None:
            message["id"] = buffered.event_id
        if event.reason is not None:
            message["reason"] = str(event.reason)
        if event.devices:
            message["count"] = event.count
            message["devices"] = {
                drops.device: {
                    "count": drops.count,
                    "first_ts": iso_utc_ms(drops.first_read_at_ms),
                    "last_ts": iso_utc_ms(drops.last_read_at_ms),
                }
                for drops in event.devices
            }
        if event.seq_first is not None:
            message["seq_first"] = event.seq_first
        if event.seq_last is not None:
            message["seq_last"] = event.seq_last
        if event.detail is not None:
            message["detail"] = event.detail
        return OutgoingMessage(self.event_topic, to_json(message))


def _iso_or_none(epoch_ms: int | None) -> str | None:
    return None if epoch_ms is None else iso_utc_ms(epoch_ms)


def _device_entry(device: DeviceInfo) -> dict[str, object]:
    entry: dict[str, object] = {"name": device.name, "bus": device.bus, "kind": device.kind}
    for key, value in (
        ("template", device.template),
        ("manufacturer", device.manufacturer),
        ("model", device.model),
        ("medium", device.medium),
        ("device_name", device.device_name),
    ):
        if value is not None:
            entry[key] = value
    return entry


def _point_entry(name: str, unit: str | None, configured: PointInfo | None) -> dict[str, object]:
    entry: dict[str, object] = {"name": name, "unit": unit}
    if configured is None:
        return entry
    if configured.device_class is not None:
        entry["device_class"] = configured.device_class
    if configured.writable:
        entry |= {"writable": True, "min": configured.minimum, "max": configured.maximum}
    return entry
