"""Bytes upstream per value, for each dialect (today: the JSON dialect), in issue 11's shape: a
meter of 30 float32 points (the simulated Eastron SDM630's first 30 registers) polled every
second, its values decoded as the Modbus driver decodes them (shortest float32 decimal).

Counted per value: the reading's JSON payload alone, and the whole MQTT PUBLISH packet (fixed
header, topic, packet id, payload; MQTT 3.1.1, QoS 1) as it crosses the uplink, and that plus
the device's retained description and the birth once per connection of an hour. The PUBACK
coming back (4 bytes a reading) is downstream and left out, as is TCP/TLS framing.

For the ratio, the same readings in schema version 1 (each value with its name and unit, as
fieldgate sent them before the description existed) are counted the same way.

    python bench/wire_bytes.py [--polls 3600]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "hw-sim")]

from fieldgate_sim.sdm630 import INPUT_REGISTERS, Sdm630Model  # noqa: E402

from drivers.modbus.decode import shortest_float32  # noqa: E402
from gateway.readings import BufferedReading, DeviceInfo, PointValue, Reading  # noqa: E402
from gateway.upstream.json_dialect import (  # noqa: E402
    GatewayInfo,
    JsonDialect,
    iso_utc_ms,
)
from gateway.upstream.messages import OutgoingMessage  # noqa: E402

POINTS = 30
TARGET = 20.0
#: ThingsBoard IoT Gateway 3.8.5 in the same shape (issue 11's table).
PEER = 20.5
GATEWAY = "gw-0001"
DEVICE = "meter-001"
START_MS = 1_795_000_000_000  # a 2026 timestamp: the width of ts as in the field
FIRST_SEQ = 10_000_000  # a gateway that has run a while: seq has eight digits


def publish_packet_bytes(message: OutgoingMessage) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH (QoS 1) carrying ``message``."""
    topic = message.topic.encode()
    remaining = 2 + len(topic) + 2 + len(message.payload)  # topic length, topic, packet id
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


def readings(polls: int) -> list[BufferedReading]:
    model = Sdm630Model(seed=1)
    registers = INPUT_REGISTERS[:POINTS]
    made = []
    for poll in range(polls):
        values = model.values_at(float(poll))
        points = tuple(
            PointValue(r.name, shortest_float32(values[r.name]), r.unit or None) for r in registers
        )
        made.append(
            BufferedReading(FIRST_SEQ + poll, Reading(DEVICE, START_MS + poll * 1000, points))
        )
    return made


def version_1_payload(buffered: BufferedReading) -> bytes:
    """A reading as schema version 1 sent it: each value with its name and unit."""
    reading = buffered.reading
    return json.dumps(
        {
            "gateway": GATEWAY,
            "device": reading.device,
            "seq": buffered.seq,
            "ts": iso_utc_ms(reading.read_at_ms),
            "quality": str(reading.quality),
            "values": {p.name: {"value": p.value, "unit": p.unit} for p in reading.values},
        },
        separators=(",", ":"),
    ).encode()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=3600, help="polls of the meter (1 s each)")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Figures:
    values: int
    payload: int
    packets: int
    #: The birth and the description, once per connection.
    once: int


def measure(made: Sequence[BufferedReading]) -> Figures:
    info = GatewayInfo(
        "0.1.0",
        "sha256:" + "0" * 64,
        START_MS,
        (DeviceInfo(DEVICE, "lan", "modbus", template="eastron-sdm630"),),
    )
    dialect = JsonDialect("fieldgate", GATEWAY, info)
    once = publish_packet_bytes(dialect.birth())
    payload = packets = 0
    for buffered in made:
        description = dialect.description(buffered)
        if description is not None:
            once += publish_packet_bytes(description)
        message = dialect.reading(buffered)
        payload += len(message.payload)
        packets += publish_packet_bytes(message)
    return Figures(len(made) * POINTS, payload, packets, once)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    made = readings(args.polls)
    now = measure(made)
    values = now.values
    topic = f"fieldgate/{GATEWAY}/devices/{DEVICE}/reading"
    old_payload = sum(len(version_1_payload(b)) for b in made)
    old_packets = sum(
        publish_packet_bytes(OutgoingMessage(topic, version_1_payload(b))) for b in made
    )
    print(
        f"JSON dialect, schema 2: {len(made)} readings of {POINTS} float32 points ({values} values)"
    )
    print(f"  payload only:              {now.payload / values:6.2f} bytes/value")
    print(
        f"  MQTT PUBLISH packets:      {now.packets / values:6.2f} bytes/value "
        f"(target <= {TARGET:g}: {now.packets / values / TARGET:.2f} of it; "
        f"peer {PEER:g}: {now.packets / values / PEER:.2f} of it)"
    )
    print(
        f"  + birth and description:   {(now.packets + now.once) / values:6.2f} bytes/value "
        f"(once per connection: {now.once} bytes)"
    )
    print("JSON dialect, schema 1 (values with names and units), for the ratio:")
    print(f"  payload only:              {old_payload / values:6.2f} bytes/value")
    print(
        f"  MQTT PUBLISH packets:      {old_packets / values:6.2f} bytes/value "
        f"(schema 2 sends {now.packets / old_packets:.2f} of it)"
    )
    print("other dialects: none yet (Sparkplug B is not built)")
    return 0 if now.packets / values <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
