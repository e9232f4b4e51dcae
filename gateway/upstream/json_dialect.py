"""fieldgate's JSON dialect, the first wire format: a retained ``online``/``offline`` status and
one JSON message per device poll.

Documented in README.md ("Topics and payload") and as JSON Schema in docs/payload.schema.json;
change the three together (tests/test_dialect.py checks the payload against the schema).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

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

    def reading_topic(self, device: str) -> str:
        return f"{self._prefix}/{self._gateway_id}/devices/{device}/reading"

    def will(self) -> OutgoingMessage:
        # Retained, as birth and goodbye are: a subscriber arriving later still learns the state.
        return OutgoingMessage(self.status_topic, OFFLINE, retain=True)

    def birth(self) -> OutgoingMessage:
        return OutgoingMessage(self.status_topic, ONLINE, retain=True)

    def goodbye(self) -> OutgoingMessage:
        return OutgoingMessage(self.status_topic, OFFLINE, retain=True)

    def reading(self, buffered: BufferedReading) -> OutgoingMessage:
        reading = buffered.reading
        message = {
            "gateway": self._gateway_id,
            "device": reading.device,
            "seq": buffered.seq,
            "ts": iso_utc_ms(reading.read_at_ms),
            "quality": str(reading.quality),
            "values": {
                point.name: {"value": point.value, "unit": point.unit} for point in reading.values
            },
        }
        # Compact, and strict: JSON has no NaN (reading_from_values already made those null).
        payload = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
        return OutgoingMessage(self.reading_topic(reading.device), payload)
