"""fieldgate's JSON dialect, the first wire format: a retained ``online``/``offline`` status and
one JSON message per device poll.

Documented in README.md ("Topics and payload") and as JSON Schema in docs/payload.schema.json
and docs/event.schema.json; change them together (tests/test_dialect.py checks the payloads
against the schemas).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gateway.events import BufferedEvent
from gateway.readings import BufferedReading
from gateway.upstream.messages import OutgoingMessage

ONLINE = b"online"
OFFLINE = b"offline"


def iso_utc_ms(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and a ``Z``: the timestamp format of the wire payload."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


class JsonDialect:
    """Topics ``<prefix>/<gateway>/status`` and ``<prefix>/<gateway>/devices/<device>/reading``."""

    def __init__(self, topic_prefix: str, gateway_id: str) -> None:
        self._prefix = topic_prefix
        self._gateway_id = gateway_id

    @property
    def status_topic(self) -> str:
        return f"{self._prefix}/{self._gateway_id}/status"

    @property
    def event_topic(self) -> str:
        return f"{self._prefix}/{self._gateway_id}/events"

    def reading_topic(self, device: str) -> str:
        return f"{self._prefix}/{self._gateway_id}/devices/{device}/reading"

    def will(self) -> OutgoingMessage:
        # Retained, as birth and goodbye are: a subscriber arriving later still learns the state.
        return OutgoingMessage(self.status_topic, OFFLINE, retain=True)

    def birth(self) -> OutgoingMessage:
        return OutgoingMessage(self.status_topic, ONLINE, retain=True)

    def goodbye(self) -> OutgoingMessage:
        return OutgoingMessage(self.status_topic, OFFLINE, retain=True)

    def reading(self, buffered: BufferedReading, *, historical: bool = False) -> OutgoingMessage:
        reading = buffered.reading
        message: dict[str, object] = {
            "gateway": self._gateway_id,
            "device": reading.device,
            "seq": buffered.seq,
            "ts": iso_utc_ms(reading.read_at_ms),
            "quality": str(reading.quality),
            "values": {
                point.name: {"value": point.value, "unit": point.unit} for point in reading.values
            },
        }
        if historical:
            # Only when true: a live reading's bytes stay what they were before replay existed.
            message["historical"] = True
        if reading.unsynchronised is not None:
            # Taken before the clock synchronised, on a boot that ended before it did: ts is
            # the clock's guess then, which nothing can correct now.
            message["time"] = "unsynchronised"
        # Compact, and strict: JSON has no NaN (reading_from_values already made those null).
        payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        return OutgoingMessage(self.reading_topic(reading.device), payload)

    def event(self, buffered: BufferedEvent) -> OutgoingMessage:
        event = buffered.event
        message: dict[str, object] = {
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
        payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        return OutgoingMessage(self.event_topic, payload)
