"""The wire format upstream: topics and the JSON of one message per device poll.

Documented in README.md ("Topics and payload") and as JSON Schema in docs/payload.schema.json;
change the three together.
"""

from __future__ import annotations

import json

from gateway.readings import BufferedReading, iso_utc_ms


def status_topic(prefix: str, gateway_id: str) -> str:
    return f"{prefix}/{gateway_id}/status"


def reading_topic(prefix: str, gateway_id: str, device: str) -> str:
    return f"{prefix}/{gateway_id}/devices/{device}/reading"


def encode_reading(gateway_id: str, buffered: BufferedReading) -> bytes:
    reading = buffered.reading
    message = {
        "gateway": gateway_id,
        "device": reading.device,
        "seq": buffered.seq,
        "ts": iso_utc_ms(reading.read_at_ms),
        "quality": str(reading.quality),
        "values": {
            point.name: {"value": point.value, "unit": point.unit} for point in reading.values
        },
    }
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
