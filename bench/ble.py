"""BLE figures: how fast the driver decodes advertisements, and what 200 sensors cost.

1. Advertisements decoded per second through the driver's path (bleak's detection callback ->
   the configured sensor -> parser -> sampler), in this process, per format, with payloads
   from hw-sim's encoders (every packet new, so none is dropped as a repeat).
2. 200 simulated BTHome sensors advertising once a second through the simulated BlueZ on a
   private D-Bus, heard by the gateway as a child process (bleak, the D-Bus traffic, decoding,
   one reading per sensor per 10 s into SQLite, MQTT to a local Mosquitto): its CPU share over
   10 s and its memory (RSS) with BLE on.

Prints figures only: no assertions, no pass/fail.

    .venv/bin/python -m bench.ble            # full
    .venv/bin/python -m bench.ble --quick    # fewer advertisements, a 3 s sample
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from fieldgate_sim.bluez import formats
from fieldgate_sim.bluez.simulator import SimulatedBluetooth, many_sensors
from fieldgate_sim.mosquitto import MosquittoBroker, mosquitto_available

from bench.end_to_end import buffer_state, cpu_seconds, status_kib
from drivers.ble.config import BleBus, BleDevice
from drivers.ble.driver import BleAdapter
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.errors import DeviceError
from gateway.readings import DeviceIdentity, Reading

REPO = Path(__file__).resolve().parent.parent
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SENSORS = 200
INTERVAL_S = 10


def address(n: int) -> str:
    return f"02:00:00:00:{n >> 8:02X}:{n & 0xFF:02X}"


def payload_maker(kind: str) -> Callable[[str, int], formats.Payload]:
    def make(where: str, n: int) -> formats.Payload:
        t, h = 4.0 + (n % 50) / 10, 60.0 + (n % 30) / 10
        if kind == "bthome":
            return formats.bthome_v2(where, n, t, h, 90)
        if kind == "bthome-encrypted":
            return formats.bthome_v2(where, n, t, h, 90, key=KEY, counter=n)
        if kind == "ruuvi":
            return formats.ruuvi_rawv2(where, n, t, h, 1013.0, 2950)
        if kind == "pvvx-encrypted":
            return formats.atc_pvvx_encrypted(where, n, t, h, 90, KEY)
        if kind == "mibeacon-encrypted":
            return formats.mibeacon_v5_encrypted(where, n, "temperature", t, KEY)
        return formats.atc_pvvx(where, n, t, h, 90, 2950)

    return make


class _NoSink:
    async def submit(self, reading: Reading) -> None:
        return None

    def describe(self, device: str, identity: DeviceIdentity) -> None:
        return None

    def device_failed(self, device: str, error: DeviceError) -> None:
        raise AssertionError(f"{device}: {error}")


def decode_rate(kind: str, fmt: str, sensors: int, per_sensor: int) -> tuple[float, int, int]:
    """(advertisements/s, decoded, rejected) through :class:`BleAdapter`'s callback."""
    key_file = Path(tempfile.mkstemp(prefix="fieldgate-bench-key-")[1])
    key_file.write_text(KEY.hex())
    try:
        devices = [
            settings_of(
                BleDevice.model_validate(
                    {
                        "name": f"s{n}",
                        "bus": "radio",
                        "address": address(n),
                        "format": fmt,
                        "interval": "10s",
                        **({"bind_key_file": str(key_file)} if "encrypted" in kind else {}),
                    }
                )
            )
            for n in range(sensors)
        ]
        bus = settings_of(BleBus(name="radio", type="ble"))
        adapter = BleAdapter(bus, devices, SystemClock())
        asyncio.run(adapter.open_decoders(_NoSink()))
        make = payload_maker(kind)
        # Built before the clock starts: encoding (AES included) is the simulator's cost.
        adverts = []
        for i in range(1, per_sensor + 1):
            for n in range(sensors):
                where = address(n)
                payload = make(where, i)
                data = AdvertisementData(
                    local_name=f"S{n}",
                    manufacturer_data=payload.manufacturer_data,
                    service_data=payload.service_data,
                    service_uuids=[],
                    tx_power=None,
                    rssi=-60,
                    platform_data=(),
                )
                adverts.append((BLEDevice(where, f"S{n}", None), data))
        started = time.perf_counter()
        for device, data in adverts:
            adapter.on_advert(device, data)
        took = time.perf_counter() - started
    finally:
        key_file.unlink()
    return len(adverts) / took, adapter.decoded, adapter.rejected


def gateway_config(broker_port: int, buffer: Path) -> str:
    lines = [
        "gateway: {id: bench-ble}",
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}}}",
        f"buffer: {{path: {buffer}}}",
        "buses: [{name: radio, type: ble}]",
        "devices:",
    ]
    lines += [
        f"  - {{name: s{n}, bus: radio, address: '{address(n)}', interval: {INTERVAL_S}s}}"
        for n in range(SENSORS)
    ]
    return "\n".join(lines) + "\n"


def two_hundred_sensors(sample_s: float) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="fieldgate-bench-ble-") as tmp,
        MosquittoBroker() as broker,
        SimulatedBluetooth(many_sensors(SENSORS, every=1.0)) as bt,
    ):
        config = Path(tmp) / "fieldgate.yaml"
        buffer = Path(tmp) / "buffer.db"
        config.write_text(gateway_config(broker.port, buffer))
        log = (Path(tmp) / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(config)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bt.address},
        )
        try:
            # Warm up: every sensor heard and its first reading written.
            deadline = time.monotonic() + 60
            while buffer_state(buffer)[1] < SENSORS and time.monotonic() < deadline:
                time.sleep(0.5)
            assert bt.simulator is not None
            sim = bt.simulator
            cpu0, wall0, sent0 = cpu_seconds(gateway.pid), time.monotonic(), sim.adverts
            seq0 = buffer_state(buffer)[1]
            time.sleep(sample_s)
            cpu1, wall1, sent1 = cpu_seconds(gateway.pid), time.monotonic(), sim.adverts
            seq1 = buffer_state(buffer)[1]
            rss = status_kib(gateway.pid, "VmRSS")
            peak = status_kib(gateway.pid, "VmHWM")
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=20)
            log.close()
        share = (cpu1 - cpu0) / (wall1 - wall0) * 100
        print(
            f"{SENSORS} sensors advertising once a second, one reading each per {INTERVAL_S}s:\n"
            f"  sampled {wall1 - wall0:.1f}s: {sent1 - sent0} advertisements sent, "
            f"{seq1 - seq0} readings stored\n"
            f"  gateway CPU: {share:.1f}% of one core\n"
            f"  gateway memory with BLE on: RSS {rss / 1024:.1f} MiB (peak {peak / 1024:.1f} MiB)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    per_sensor = 10 if args.quick else 50
    print(f"advertisements decoded per second through the driver ({100 * per_sensor} each):")
    for kind, fmt in (
        ("bthome", "bthome"),
        ("bthome-encrypted", "bthome"),
        ("ruuvi", "ruuvi"),
        ("pvvx", "atc"),
        ("pvvx-encrypted", "atc"),
        ("mibeacon-encrypted", "xiaomi"),
        ("ruuvi", "auto"),
    ):
        rate, decoded, rejected = decode_rate(kind, fmt, 100, per_sensor)
        print(f"  {kind:18} format {fmt:7} {rate:8.0f}/s  ({decoded} decoded, {rejected} rejected)")
    if not mosquitto_available():
        print("mosquitto is not installed: the 200-sensor figure is skipped")
        return
    two_hundred_sensors(3.0 if args.quick else 10.0)


if __name__ == "__main__":
    main()
