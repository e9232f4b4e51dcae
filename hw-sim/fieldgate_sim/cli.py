"""`fieldgate-sim`: run simulated field devices until interrupted.

    fieldgate-sim modbus-tcp --host 127.0.0.1 --port 5020 --unit 1 --unit 2 --meters 3

serves SDM630 meters with unit ids 1 and 2 on each of ports 5020, 5021 and 5022 (port 0: every
server gets a free port from the kernel).

    fieldgate-sim modbus-rtu --baud 9600 --unit 1 --unit 2 --unit 3 --fault 2:silent
    fieldgate-sim modbus-rtu-tcp --port 4001 --unit 1 --fault 1:crc=0.01

serve the meters on a simulated RS-485 line (a pseudo-terminal whose relay holds each byte for
its wire time; the port to open is printed) or as RTU frames over TCP (a serial device server).
`--template NAME` serves meters built from one of fieldgate's meter templates instead (plausible
values for every point; `fieldgate templates list` names them), and `--reply-delay MS` makes every
unit answer that many milliseconds after a request, as real meters do.
`--fault UNIT:KIND[=VALUE]` gives a unit a fault: silent, slow=SECONDS, busy, refuse=START-END
(holding and input), crc=RATE, wrong-fc, truncate, tid0, garbage, disconnect.

    fieldgate-sim ble --sensors 20 --fault connect-hang=F0:F0:00:00:00:09

starts a private D-Bus system bus with a simulated BlueZ (adapter hci0) on it: one sensor of
each supported format (BTHome plain and encrypted, Ruuvi, MiBeacon, pvvx, atc1441, Govee,
ThermoPro), one
sending garbage and a GATT thermometer, plus `--sensors N` more BTHome sensors. It prints
`DBUS_SYSTEM_BUS_ADDRESS=...` (give that to `fieldgate run` or `fieldgate scan ble`) and the
file with the encrypted sensor's bind key. `--fault KIND=ADDRESS`: vanish, connect-fail,
connect-hang; `--power-off-after SECONDS` powers the adapter off after that long.

One line per server goes to stdout once it accepts connections, so a parent process can wait for
it; SIGINT or SIGTERM stops it with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fieldgate_sim.bluez.bus import PrivateBus
from fieldgate_sim.bluez.simulator import (
    DEMO_BIND_KEY,
    BluezSimulator,
    Kind,
    default_sensors,
    many_sensors,
)
from fieldgate_sim.modbus_server import Faults, MeterServer, Sdm630Meter, SimulatedDevice
from fieldgate_sim.serial_line import SerialLine
from fieldgate_sim.template_meter import TemplateMeter, template_names

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldgate-sim", description="Simulated field devices for fieldgate."
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on stderr (default: WARNING)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tcp = commands.add_parser("modbus-tcp", help="serve simulated SDM630 meters over Modbus TCP")
    tcp.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    tcp.add_argument(
        "--port",
        type=int,
        default=5020,
        help="port of the first server; 0 lets the kernel pick free ports (default: %(default)s)",
    )
    tcp.add_argument(
        "--unit",
        type=int,
        action="append",
        dest="units",
        metavar="ID",
        help="unit id of a meter on every port; repeat for several (default: 1)",
    )
    tcp.add_argument(
        "--meters",
        type=int,
        default=1,
        metavar="N",
        help="number of servers, on ports PORT..PORT+N-1 (default: %(default)s)",
    )
    _meter_options(tcp)
    for name, text in (
        ("modbus-rtu", "serve simulated SDM630 meters on a simulated RS-485 line (a pty)"),
        ("modbus-rtu-tcp", "serve simulated SDM630 meters as RTU frames over TCP"),
    ):
        rtu = commands.add_parser(name, help=text)
        rtu.add_argument("--unit", type=int, action="append", dest="units", metavar="ID")
        rtu.add_argument("--fault", action="append", default=[], metavar="UNIT:KIND[=VALUE]")
        if name == "modbus-rtu":
            rtu.add_argument("--baud", type=int, default=9600, help="line speed (9600)")
            rtu.add_argument("--bits-per-char", type=int, choices=[10, 11], default=10)
        else:
            rtu.add_argument("--host", default="127.0.0.1")
            rtu.add_argument("--port", type=int, default=4001)
        _meter_options(rtu)
    ble = commands.add_parser("ble", help="a simulated BlueZ with BLE sensors on a private bus")
    ble.add_argument("--adapter", default="hci0", help="adapter name (hci0)")
    ble.add_argument(
        "--sensors", type=int, default=0, metavar="N", help="N more BTHome sensors (0)"
    )
    ble.add_argument(
        "--every", type=float, default=1.0, metavar="S", help="advertising interval (1s)"
    )
    ble.add_argument("--fault", action="append", default=[], metavar="KIND=ADDRESS")
    ble.add_argument("--power-off-after", type=float, metavar="SECONDS")
    return parser


def _meter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--template",
        metavar="NAME",
        help="serve meters built from this fieldgate template (default: SDM630 model)",
    )
    parser.add_argument(
        "--reply-delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="milliseconds every unit takes to answer (default: 0)",
    )


def _meter(args: argparse.Namespace, unit: int, seed: int | None = None) -> SimulatedDevice:
    meter: SimulatedDevice = (
        TemplateMeter(unit, args.template, seed) if args.template else Sdm630Meter(unit, seed=seed)
    )
    meter.reply_delay_s = args.reply_delay / 1000
    return meter


def _what(args: argparse.Namespace) -> str:
    return f"{args.template} meter" if args.template else "SDM630"


def parse_fault(text: str) -> tuple[int, Faults]:
    """``UNIT:KIND[=VALUE]`` (see the module's doc) as a unit id and its faults."""
    unit_text, _, rest = text.partition(":")
    kind, _, value = rest.partition("=")
    faults = Faults()
    match kind:
        case "silent":
            faults.silent = True
        case "slow":
            faults.delay_s = float(value)
        case "busy":
            faults.exception_code = 6
        case "refuse":
            first, _, last = value.partition("-")
            faults.refuse = [
                (t, int(first, 0), int(last or first, 0)) for t in ("holding", "input")
            ]
        case "crc":
            faults.corrupt_rate = float(value)
        case "wrong-fc":
            faults.wrong_function_code = True
        case "truncate":
            faults.truncate = True
        case "tid0":
            faults.zero_transaction_id = True
        case "garbage":
            faults.garbage = True
        case "disconnect":
            faults.disconnect = True
        case _:
            raise ValueError(f"unknown fault {kind!r}")
    return int(unit_text), faults


async def _serve_rtu(args: argparse.Namespace, units: list[int]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    meters = [_meter(args, unit) for unit in units]
    line = (
        SerialLine(meters, args.baud, args.bits_per_char) if args.command == "modbus-rtu" else None
    )
    server = line.server if line else MeterServer(meters, args.host, args.port, framing="rtu")
    try:
        if line:
            await line.start()
            where = f"serial line {line.path} ({args.baud} baud)"
        else:
            await server.start()
            where = f"RTU over TCP on {server.host}:{server.port}"
        for fault in args.fault:
            server.set_faults(*parse_fault(fault))
        print(f"serving {_what(args)} units {', '.join(map(str, units))} on {where}", flush=True)
        await stop.wait()
    except (OSError, ValueError) as exc:
        print(f"fieldgate-sim: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if line:
            await line.stop()
        else:
            await server.stop()
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    return 0


def _check_modbus_tcp(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    units: list[int] = args.units or [1]
    if len(set(units)) != len(units):
        parser.error("--unit: each unit id may be given once")
    if any(not 1 <= unit <= 255 for unit in units):
        parser.error("--unit: unit ids are 1..255")
    if args.meters < 1:
        parser.error("--meters must be at least 1")
    if args.port != 0 and not 1 <= args.port <= 65535 - (args.meters - 1):
        parser.error("--port: PORT..PORT+N-1 must lie within 1..65535 (or use 0)")
    return units


def _check_meter_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.template and args.template not in template_names():
        parser.error(f"--template {args.template}: not known; known: {', '.join(template_names())}")
    if not 0 <= args.reply_delay <= 60000:
        parser.error("--reply-delay: 0..60000 ms")


async def _serve_modbus_tcp(args: argparse.Namespace, units: list[int]) -> int:
    host, port, meters = args.host, args.port, args.meters
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Installed before binding, so a signal that arrives during start-up still ends cleanly.
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    servers = [
        MeterServer(
            # Distinct seeds, so that the meters behind different ports do not read alike.
            [_meter(args, unit, seed=index * 256 + unit) for unit in units],
            host,
            0 if port == 0 else port + index,
        )
        for index in range(meters)
    ]
    label = "unit" if len(units) == 1 else "units"
    ids = ", ".join(str(unit) for unit in units)
    try:
        for server in servers:
            await server.start()
            print(f"serving {_what(args)} {label} {ids} on {server.host}:{server.port}", flush=True)
        await stop.wait()
    except OSError as exc:
        print(f"fieldgate-sim: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for server in servers:
            await server.stop()
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    logger.info("stopped by signal")
    return 0


_BLE_FAULTS = {"vanish", "connect-fail", "connect-hang"}


async def _serve_ble(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    sensors = default_sensors() + many_sensors(args.sensors, args.every)
    for sensor in sensors:
        sensor.every = args.every if sensor.kind is not Kind.GARBAGE else sensor.every
    with PrivateBus() as bus, tempfile.TemporaryDirectory(prefix="fieldgate-sim-") as keys:
        key_file = Path(keys) / "bthome-0002.key"
        key_file.write_text(DEMO_BIND_KEY.hex() + "\n")
        simulator = BluezSimulator(sensors, bus.address, args.adapter)
        try:
            await simulator.start()
            for fault in args.fault:
                kind, _, address = fault.partition("=")
                if kind == "vanish":
                    simulator.vanish(address.upper())
                else:
                    simulator.set_connect(address.upper(), kind.removeprefix("connect-"))
            print(f"DBUS_SYSTEM_BUS_ADDRESS={bus.address}", flush=True)
            print(f"bind key of {sensors[1].address} ({sensors[1].name}): {key_file}")
            for sensor in sensors[: len(default_sensors())]:
                print(f"  {sensor.address}  {sensor.kind.value:17} {sensor.name}")
            if args.sensors:
                print(f"  ... and {args.sensors} more BTHome sensors (02:00:00:00:*)")
            print(f"advertising every {args.every:g}s on {args.adapter}", flush=True)
            if args.power_off_after is not None:
                loop.call_later(args.power_off_after, simulator.power, False)
            await stop.wait()
        finally:
            await simulator.stop()
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)
    return 0


def _check_ble(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 <= args.sensors <= 65536:
        parser.error("--sensors: 0..65536")
    if not 0.02 <= args.every <= 3600:
        parser.error("--every: 0.02..3600 seconds")
    addresses = {s.address for s in default_sensors()}
    for fault in args.fault:
        kind, _, address = fault.partition("=")
        if kind not in _BLE_FAULTS or address.upper() not in addresses:
            parser.error(
                f"--fault {fault}: KIND=ADDRESS with KIND one of {', '.join(sorted(_BLE_FAULTS))}"
                " and the address of one of the sensors listed at start"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "ble":
        _check_ble(parser, args)
        return asyncio.run(_serve_ble(args))
    _check_meter_options(parser, args)
    if args.command == "modbus-tcp":
        units = _check_modbus_tcp(parser, args)
        return asyncio.run(_serve_modbus_tcp(args, units))
    if args.command in {"modbus-rtu", "modbus-rtu-tcp"}:
        for fault in args.fault:
            try:
                parse_fault(fault)
            except ValueError as exc:
                parser.error(f"--fault {fault}: {exc}")
        return asyncio.run(_serve_rtu(args, args.units or [1]))
    parser.error(f"unknown command {args.command!r}")
    return 2  # unreachable: parser.error exits
