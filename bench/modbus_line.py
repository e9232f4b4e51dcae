"""Modbus RTU on simulated RS-485 lines (pty pairs whose relay holds each byte for its wire time).

1. One full poll of an SDM630 (its template, 32 float32 points) at 9600 8N1: transactions per
   poll (ours, and one per point), bus time per poll, and the wire-time minimum for the same
   registers (every byte of the planned frames plus the 3.5-character silences): target <= 1.10x.
2. Polls per second across 30 meters on three lines (10 each, 9600 baud), polled back to back.
3. The cost of one dead meter to the two others on its line, each polled once a second: extra
   delay per poll of the healthy meters, and the dead meter's timeouts per minute.

Prints figures only: no assertions, no pass/fail.

    .venv/bin/python bench/modbus_line.py            # about two minutes
    .venv/bin/python bench/modbus_line.py --quick    # about 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

from fieldgate_sim.modbus_server import Faults, Sdm630Meter
from fieldgate_sim.serial_line import start_serial_line_in_thread

from drivers.modbus.config import ModbusDevice, ModbusRtuBus
from drivers.modbus.plan import plan_requests
from drivers.modbus.rtu import open_modbus_rtu_bus
from drivers.modbus.settings import ModbusDeviceSettings, ModbusRtuBusSettings
from drivers.modbus.templates import load_templates
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.errors import DeviceError

BAUD = 9600
CHAR = 10 / BAUD  # 8N1


def device(name: str, unit: int) -> ModbusDeviceSettings:
    config = ModbusDevice.model_validate(
        {"name": name, "bus": "rs485", "unit_id": unit, "template": "eastron-sdm630"}
    )
    settings: ModbusDeviceSettings = settings_of(config)
    return settings


def bus(path: str, **extra: Any) -> ModbusRtuBusSettings:
    config = ModbusRtuBus.model_validate(
        {"name": "rs485", "type": "modbus_rtu", "port": path, "baudrate": BAUD, **extra}
    )
    settings: ModbusRtuBusSettings = settings_of(config)
    return settings


def wire_minimum(requests: list[Any]) -> float:
    """Frames only: request 8 bytes, answer 5 + 2n bytes, a 3.5-character silence each."""
    return float(sum((8 + 5 + 2 * r.count + 7) * CHAR for r in requests))


async def one_sdm630(polls: int) -> None:
    template = load_templates()["eastron-sdm630"]
    points = [settings_of(point) for point in template.points]
    per_point = plan_requests(points, max_gap=0, max_registers=2)
    with start_serial_line_in_thread([Sdm630Meter(1)], baudrate=BAUD) as line:
        async with open_modbus_rtu_bus(bus(line.path), [device("m", 1)], SystemClock()) as rs485:
            (meter,) = rs485.devices
            ours = list(meter.requests)
            await meter.read()  # open the port
            times = []
            for _ in range(polls):
                start = time.perf_counter()
                await meter.read()
                times.append(time.perf_counter() - start)
    bus_time = statistics.median(times)
    minimum = wire_minimum(ours)
    print("1. SDM630 full poll at 9600 8N1 (32 float32 points)")
    print(f"   transactions per poll: ours {len(ours)}, one per point {len(per_point)}")
    print(f"   registers read: ours {sum(r.count for r in ours)}, points' own 64")
    print(f"   bus time per poll (median of {polls}): {bus_time * 1000:.1f} ms")
    print(
        f"   wire-time minimum of our frames: {minimum * 1000:.1f} ms -> {bus_time / minimum:.2f}x"
    )
    print(f"   one request per point would need at least {wire_minimum(per_point) * 1000:.1f} ms")
    # A bound no plan can beat: only the points' own registers, in as few frames as the
    # meter's block limit allows, as if the unused registers between them cost nothing.
    own = sum(p.register_count for p in template.points)
    frames = len(plan_requests(points, max_gap=125, max_registers=template.max_block))
    bound = (frames * 20 + 2 * own) * CHAR
    print(
        f"   bound (points' {own} registers alone in {frames} frames): {bound * 1000:.1f} ms"
        f" -> {bus_time / bound:.2f}x"
    )


async def thirty_meters(seconds: float) -> None:
    lines = [
        start_serial_line_in_thread([Sdm630Meter(u, seed=10 * n + u) for u in range(1, 11)], BAUD)
        for n in range(3)
    ]
    counts = [0, 0, 0]
    try:
        buses = [
            open_modbus_rtu_bus(
                bus(line.path), [device(f"l{n}m{u}", u) for u in range(1, 11)], SystemClock()
            )
            for n, line in enumerate(lines)
        ]

        async def run(index: int) -> None:
            async with buses[index] as rs485:
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    for meter in rs485.devices:
                        await meter.read()
                        counts[index] += 1

        await asyncio.gather(*(run(i) for i in range(3)))
    finally:
        for line in lines:
            line.stop()
    print("2. 30 SDM630s on three 9600 baud lines, polled back to back")
    per_line = [round(c / seconds, 1) for c in counts]
    print(f"   polls/s: {sum(counts) / seconds:.1f} (per line {per_line})")


async def dead_meter(seconds: float) -> None:
    async def lateness(dead: bool) -> tuple[list[float], int]:
        with start_serial_line_in_thread([Sdm630Meter(u) for u in (1, 2, 3)], BAUD) as line:
            if dead:
                line.set_faults(2, Faults(silent=True))
            config = bus(line.path, timeout="300ms", slave_backoff_max="30s")
            devices = [device(f"m{u}", u) for u in (1, 2, 3)]
            delays: list[float] = []
            async with open_modbus_rtu_bus(config, devices, SystemClock()) as rs485:

                async def poll(meter: Any, healthy: bool) -> None:
                    loop = asyncio.get_running_loop()
                    slot = float(int(loop.time()) + 1)
                    end = loop.time() + seconds
                    while slot < end:
                        await asyncio.sleep(slot - loop.time())
                        with contextlib.suppress(DeviceError):
                            await meter.read()
                        if healthy:
                            delays.append(loop.time() - slot)
                        slot += 1.0

                m1, m2, m3 = rs485.devices
                await asyncio.gather(poll(m1, True), poll(m2, False), poll(m3, True))
                return delays, rs485.link.counters.timeouts

    alive, _ = await lateness(False)
    with_dead, timeouts = await lateness(True)
    print("3. Three SDM630s on one line, each polled once a second; unit 2 dead (timeout 300 ms)")

    def ms(delays: list[float], quantile: float) -> str:
        return f"{sorted(delays)[int(quantile * (len(delays) - 1))] * 1000:.0f} ms"

    print("   healthy meters' poll done after its slot (all alive -> with the dead one):")
    print(
        f"   median {ms(alive, 0.5)} -> {ms(with_dead, 0.5)}, p95 {ms(alive, 0.95)} -> "
        f"{ms(with_dead, 0.95)}, max {ms(alive, 1.0)} -> {ms(with_dead, 1.0)}"
    )
    per_minute = timeouts * 60 / seconds
    print(f"   dead meter's timeouts: {timeouts} in {seconds:.0f} s = {per_minute:.1f}/min")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    await one_sdm630(10 if args.quick else 50)
    await thirty_meters(5 if args.quick else 20)
    await dead_meter(15 if args.quick else 60)


if __name__ == "__main__":
    asyncio.run(main())
