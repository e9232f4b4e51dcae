"""The buffer's figures: ingest with group commit against one commit per reading (readings/s,
commits, bytes written to the disk per reading from /proc/self/io), the drain rate to a local
Mosquitto, and the time to drain a day of 100 meters (864k readings) while live readings keep
arriving (their latency from read to the broker, p50/p99); and the longest wait of a submitter
for its group commit with WAL checkpoints off the commit path (the buffer's own checkpoint
thread) against SQLite's automatic checkpoint inside the commit.

Prints figures only: no assertions, no pass/fail.

    .venv/bin/python bench/buffer.py            # everything (a few minutes)
    .venv/bin/python bench/buffer.py --quick    # small numbers, for smoke-testing
    .venv/bin/python bench/buffer.py --ingest   # the ingest figures only (bytes, fsyncs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from fieldgate_sim.mosquitto import MosquittoBroker, mosquitto_available
from paho.mqtt.enums import CallbackAPIVersion

from gateway.buffer import Buffer, ReadingStore
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.config.model import BufferConfig, MqttConfig
from gateway.health import PartHealth
from gateway.readings import BufferedReading, PointValue, Reading
from gateway.upstream.forwarder import Forwarder
from gateway.upstream.json_dialect import SCHEMA_VERSION, GatewayInfo, JsonDialect

DEVICES = 100
POINTS = 8  # a small meter's worth: voltages, currents, power, energy
PREFIX = "fieldgate"
GATEWAY = "bench"


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def reading(device: int, at_ms: int) -> Reading:
    return Reading(
        f"meter{device:03d}",
        at_ms,
        tuple(PointValue(f"p{i}", 230.0 + i + (at_ms % 1000) / 1000, "V") for i in range(POINTS)),
    )


def bench_dialect() -> JsonDialect:
    return JsonDialect(PREFIX, GATEWAY, GatewayInfo("bench", "sha256:" + "0" * 64, 0))


def payload_bytes(sample: Reading) -> int:
    return len(bench_dialect().reading(BufferedReading(1, sample)).payload)


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    # On the disk, not /tmp's tmpfs (if it is one): write_bytes counts what reaches storage.
    path = Path(tempfile.mkdtemp(prefix="fieldgate-bench-", dir=Path(__file__).parent.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def ingest_grouped(path: Path, slots: int) -> tuple[float, int, int]:
    """100 devices polled on aligned slots, as the scheduler does: each slot's readings are
    submitted together and go to disk as a group. Returns seconds, commits, bytes written
    (from opening a new file to closing it: the WAL, its checkpoints into the database file
    and the last one at close, so every byte a reading costs is counted once it is home)."""
    before = write_bytes()
    buffer = await Buffer.open(path, 10**12, 1e12, commit_delay=BufferConfig().commit_delay)
    try:
        started = time.perf_counter()
        for slot in range(slots):
            at_ms = 1_764_072_000_000 + slot * 10_000
            await asyncio.gather(*(buffer.append(reading(d, at_ms)) for d in range(DEVICES)))
        took = time.perf_counter() - started
    finally:
        await buffer.close()
    return took, buffer.groups_committed, write_bytes() - before


async def submit_waits(path: Path, slots: int, background: bool) -> tuple[list[float], int]:
    """100 devices' slots back to back, so the WAL passes its checkpoint threshold many times;
    every submitter's wait for its group (seconds), and the background checkpoints run."""
    buffer = await Buffer.open(
        path,
        10**12,
        1e12,
        commit_delay=BufferConfig().commit_delay,
        background_checkpoint=background,
    )
    waits: list[float] = []

    async def submit(device: int, at_ms: int) -> None:
        started = time.perf_counter()
        await buffer.append(reading(device, at_ms))
        waits.append(time.perf_counter() - started)

    try:
        for slot in range(slots):
            at_ms = 1_764_072_000_000 + slot * 10_000
            await asyncio.gather(*(submit(d, at_ms) for d in range(DEVICES)))
        return waits, buffer.checkpoints
    finally:
        await buffer.close()


def ingest_per_reading(path: Path, slots: int) -> tuple[float, int, int]:
    """The same readings, one commit each (the buffer before group commit)."""
    before = write_bytes()
    store = ReadingStore(path, 10**12, 1e12)
    try:
        started = time.perf_counter()
        for slot in range(slots):
            at_ms = 1_764_072_000_000 + slot * 10_000
            for device in range(DEVICES):
                store.append(reading(device, at_ms))
        took = time.perf_counter() - started
    finally:
        store.close()
    return took, slots * DEVICES, write_bytes() - before


def count_fsyncs(mode: str, slots: int) -> int | None:
    """fsync and fdatasync calls of one ingest (``grouped`` or ``single``) in a child process
    under strace, which counts the system calls themselves; None without strace."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with workdir() as work:
        counts = work / "strace.txt"
        subprocess.run(
            [
                strace,
                "-f",
                "-qq",
                "-c",
                "-e",
                "trace=fsync,fdatasync",
                "-o",
                str(counts),
                sys.executable,
                __file__,
                "--ingest-only",
                mode,
                "--slots",
                str(slots),
                "--dir",
                str(work),
            ],
            check=True,
        )
        calls = 0
        for line in counts.read_text().splitlines():
            fields = line.split()
            if fields and fields[-1] in {"fsync", "fdatasync"}:
                calls += int(fields[3])
        return calls


def ingest_only(mode: str, slots: int, directory: Path) -> None:
    """The child of :func:`count_fsyncs`: one ingest, nothing else."""
    if mode == "grouped":
        asyncio.run(ingest_grouped(directory / "grouped.db", slots))
    else:
        ingest_per_reading(directory / "single.db", slots)


def prefill(path: Path, count: int) -> None:
    store = ReadingStore(path, 10**12, 1e12)
    try:
        start_ms = int(time.time() * 1000) - 86_400_000
        batch: list[Reading] = []
        for n in range(count):
            batch.append(reading(n % DEVICES, start_ms + (n // DEVICES) * 10_000))
            if len(batch) == 10_000:
                store.append_many(batch)
                batch = []
        if batch:
            store.append_many(batch)
    finally:
        store.close()


class LiveLatency:
    """Subscribes to the live devices' topics only, and keeps read-to-arrival latencies."""

    def __init__(self, port: int, devices: Sequence[str]) -> None:
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-live")
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(
            [(f"{PREFIX}/{GATEWAY}/devices/{device}/reading", 1) for device in devices]
        )
        self._client.loop_start()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        document = json.loads(message.payload)
        sent_ms = document["values"][0]  # the only point: sent_at_ms
        with self._lock:
            self.latencies.append(time.time() - sent_ms / 1000)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


async def drain(path: Path, broker: MosquittoBroker, count: int, replay_rate: float) -> None:
    prefill(path, count)
    live_devices = [f"live{d:03d}" for d in range(DEVICES)]
    latency = LiveLatency(broker.port, live_devices)
    buffer = await Buffer.open(path, 10**12, 1e12)
    forwarder = Forwarder(
        settings_of(MqttConfig(host=broker.host, port=broker.port)),
        bench_dialect(),
        buffer,
        SystemClock(),
        PartHealth("uplink", "-"),
        PartHealth("buffer", "-"),
        gateway_id=GATEWAY,
        replay_rate=replay_rate,
    )

    async def live() -> None:
        # 100 devices on a 10 s slot, stamped when submitted (the moment of "reading").
        while True:
            now_ms = int(time.time() * 1000)
            await asyncio.gather(
                *(
                    buffer.append(Reading(d, now_ms, (PointValue("sent_at_ms", now_ms, "ms"),)))
                    for d in live_devices
                )
            )
            await asyncio.sleep(10 - (time.time() % 10))

    started = time.perf_counter()
    task = asyncio.create_task(forwarder.run())
    producer = asyncio.create_task(live())
    waiting = count
    marks = []
    try:
        while waiting > 0:
            await asyncio.sleep(1.0)
            stats = await buffer.stats()
            waiting = stats.waiting
            marks.append((time.perf_counter() - started, waiting))
            if len(marks) % 15 == 0:
                print(f"    {marks[-1][0]:.0f} s: {waiting} waiting", flush=True)
    finally:
        took = time.perf_counter() - started
        producer.cancel()
        task.cancel()
        await asyncio.gather(task, producer, return_exceptions=True)
        await buffer.close()
        latency.close()
    lat = sorted(latency.latencies)
    p50 = statistics.median(lat) if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    rate = "unlimited" if replay_rate == 0 else f"{replay_rate:g}/s"
    print(
        f"  drain {count} backlog readings (replay pace {rate}) to local Mosquitto, "
        f"QoS 1, delete after PUBACK: {took:.1f} s, {count / took:,.0f} msgs/s"
    )
    print(
        f"  live readings meanwhile ({DEVICES} devices, 10 s slots): {len(lat)} received, "
        f"read -> broker -> subscriber latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )


async def main_async(args: argparse.Namespace) -> None:
    slots = args.slots if args.slots else 20 if args.quick else 100
    size = payload_bytes(reading(0, 1_764_072_000_000))
    print(
        f"ingest: {DEVICES} devices x {slots} aligned slots, {POINTS} points each "
        f"({size} bytes of schema-{SCHEMA_VERSION} JSON payload per reading, as JsonDialect "
        "sends it); WAL, synchronous=FULL; bytes written from open to close"
    )
    with workdir() as work:
        took, commits, written = await ingest_grouped(work / "grouped.db", slots)
        n = slots * DEVICES
        print(
            f"  group commit:       {n / took:9,.0f} readings/s, {commits} commits "
            f"({n / commits:.0f} readings each), {written / n:7,.0f} bytes written per reading "
            f"({written / n / size:.1f}x payload)"
        )
        took, commits, written = await asyncio.to_thread(
            ingest_per_reading, work / "single.db", slots
        )
        print(
            f"  one commit each:    {n / took:9,.0f} readings/s, {commits} commits "
            f"(1 reading each),  {written / n:7,.0f} bytes written per reading "
            f"({written / n / size:.1f}x payload)"
        )
    for mode, label in (("grouped", "group commit"), ("single", "one commit each")):
        fsyncs = count_fsyncs(mode, slots)
        if fsyncs is None:
            print("  fsyncs: strace is not installed (apt-get install strace) to count them")
            break
        print(
            f"  {label + ':':19s} {fsyncs:6d} fsyncs for {n} readings "
            f"({fsyncs / n:.3f} per reading; counted by strace, open and close included)"
        )
    if args.ingest:
        return
    print(
        f"submit wait: {DEVICES} devices x {slots * 4} slots back to back "
        "(the WAL passes its 1 MiB checkpoint threshold every few dozen groups)"
    )
    for background, label in ((False, "checkpoint in the commit"), (True, "checkpoint beside it")):
        with workdir() as work:
            waits, checkpoints = await submit_waits(work / "waits.db", slots * 4, background)
        waits.sort()
        p99 = waits[int(len(waits) * 0.99)]
        print(
            f"  {label:25s} longest {waits[-1] * 1000:6.1f} ms, p99 {p99 * 1000:5.1f} ms, "
            f"median {statistics.median(waits) * 1000:5.1f} ms"
            + (f" ({checkpoints} background checkpoints)" if background else "")
        )
    counts = [20_000] if args.quick else [100_000, 864_000]
    with MosquittoBroker() as broker:
        for count in counts:
            with workdir() as work:
                await drain(work / "drain.db", broker, count, args.replay_rate)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--ingest", action="store_true", help="only the ingest figures (seconds, no broker)"
    )
    parser.add_argument(
        "--slots", type=int, default=0, help="ingest slots of 100 readings (default 100; 20 quick)"
    )
    # The child process that count_fsyncs runs under strace.
    parser.add_argument("--ingest-only", choices=["grouped", "single"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--replay-rate",
        type=float,
        default=BufferConfig().replay_rate,
        help="backlog pace, msgs/s (0: unlimited); default the config's default",
    )
    args = parser.parse_args(argv)
    if args.ingest_only is not None:
        ingest_only(args.ingest_only, args.slots, args.dir)
        return 0
    if not args.ingest and not mosquitto_available():
        print("mosquitto is not installed: apt-get install mosquitto (or `make mosquitto`)")
        return 1
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
