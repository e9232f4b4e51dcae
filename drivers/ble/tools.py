"""``fieldgate scan ble``: listen on an adapter for a while and show what advertises nearby:
address, name, RSSI, the format and values the parsers decode, and a config snippet to paste.
Progress goes to stderr while it listens, the table and the snippet to stdout."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from drivers.ble.config import BleBus
from drivers.ble.decode import AdvertDecoder, Decoded, Rejected, Rejection
from drivers.ble.driver import describe_trouble
from drivers.ble.scan_data import advert_from
from drivers.ble.settings import BleBusSettings, Format
from drivers.table import write_table
from gateway.config.handover import settings_of

EX_UNAVAILABLE = 69


@dataclass
class Heard:
    """What one device in range showed while we listened."""

    address: str
    decoder: AdvertDecoder = field(default_factory=lambda: AdvertDecoder(Format.AUTO))
    name: str | None = None
    rssi: int = -127
    adverts: int = 0
    decoded: Decoded | None = None
    encrypted: bool = False


def bus_of(args: argparse.Namespace, load_config: Callable[[Any], Any]) -> BleBusSettings:
    """The adapter to listen on: a BLE bus of the config (``-c FILE BUS``), or ``--adapter``."""
    settings: BleBusSettings = settings_of(_bus_model(args, load_config))
    return settings


def _bus_model(args: argparse.Namespace, load_config: Callable[[Any], Any]) -> BleBus:
    if args.config and args.bus != "ble":
        config = load_config(args.config)
        for bus in config.buses:
            if bus.name == args.bus and isinstance(bus, BleBus):
                return bus
    return BleBus.model_validate({"name": "ble", "type": "ble", "adapter": args.adapter})


async def scan_command(
    args: argparse.Namespace,
    load_config: Callable[[Any], Any],
    out: TextIO = sys.stdout,
    progress: TextIO = sys.stderr,
) -> int:
    bus = bus_of(args, load_config)
    heard: dict[str, Heard] = {}

    def on_advert(device: BLEDevice, data: AdvertisementData) -> None:
        entry = heard.setdefault(device.address.upper(), Heard(device.address.upper()))
        entry.adverts += 1
        entry.rssi = data.rssi
        entry.name = data.local_name or entry.name
        outcome = entry.decoder.decode(advert_from(device, data, time.monotonic()))
        if isinstance(outcome, Decoded):
            entry.decoded = outcome
        elif isinstance(outcome, Rejected) and outcome.reason is Rejection.KEY:
            entry.encrypted = True

    scanner = BleakScanner(detection_callback=on_advert, bluez={"adapter": bus.adapter})
    try:
        await scanner.start()
    except (BleakError, OSError, EOFError) as exc:
        print(f"fieldgate scan ble: {describe_trouble(exc, bus)}", file=progress)
        return EX_UNAVAILABLE
    try:
        seconds = max(1, round(args.seconds))
        for second in range(1, seconds + 1):
            await asyncio.sleep(1.0)
            known = sum(1 for h in heard.values() if h.decoded)
            print(
                f"listening on {bus.adapter}: {second}/{seconds}s, {len(heard)} device(s) "
                f"heard, {known} decoded",
                file=progress,
                flush=True,
            )
    finally:
        await scanner.stop()
    if not heard:
        print(f"nothing advertised on {bus.adapter} within {seconds}s", file=out)
        return EX_UNAVAILABLE
    report(list(heard.values()), bus.name, bus.adapter, out)
    return 0


def report(heard: list[Heard], bus: str, adapter: str, out: TextIO) -> None:
    ordered = sorted(heard, key=lambda h: (h.decoded is None and not h.encrypted, -h.rssi))
    rows = [("address", "name", "rssi", "format", "sensor", "values")]
    for entry in ordered:
        rows.append(
            (
                entry.address,
                entry.name or "-",
                str(entry.rssi),
                _format(entry),
                _sensor(entry),
                _values(entry),
            )
        )
    write_table(rows, out)
    snippet = [e for e in ordered if e.decoded is not None or e.encrypted]
    if not snippet:
        out.write("\nno advertisement here is in a format fieldgate decodes\n")
        return
    out.write(
        "\n# Paste into the config (names are yours to choose); the bus, under buses:\n"
        f"#   - {{name: {bus}, type: ble, adapter: {adapter}}}\n# and under devices:\n"
    )
    used: set[str] = set()
    for entry in snippet:
        name = _device_name(entry, used)
        out.write(f'- name: {name}\n  bus: {bus}\n  address: "{entry.address}"\n')
        if entry.decoded is not None:
            out.write(f"  format: {entry.decoded.format.value}\n")
        out.write("  interval: 60s\n")
        if entry.encrypted:
            out.write(f"  bind_key_file: /etc/fieldgate/{name}.key  # its 32-hex-digit key\n")


def _format(entry: Heard) -> str:
    if entry.decoded is not None:
        return entry.decoded.format.value
    return "encrypted" if entry.encrypted else "-"


def _sensor(entry: Heard) -> str:
    if entry.decoded is None:
        return "needs its bind key" if entry.encrypted else "-"
    parts = (entry.decoded.manufacturer, entry.decoded.model)
    return " ".join(p for p in parts if p) or "-"


def _values(entry: Heard) -> str:
    if entry.decoded is None:
        return "-"
    return ", ".join(f"{m.name}={m.value}{m.unit or ''}" for m in entry.decoded.measurements)


def _device_name(entry: Heard, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", (entry.name or entry.address).lower()).strip("-")
    base = base[:48] or "sensor"
    name, n = base, 2
    while name in used:
        name, n = f"{base}-{n}", n + 1
    used.add(name)
    return name
