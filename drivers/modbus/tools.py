"""Technician commands for Modbus: ``fieldgate templates``, ``fieldgate scan``, ``fieldgate
probe``. Each takes the parsed command line and writes a table; the bus comes from the config
(``-c FILE BUS``) or from options (``--serial /dev/ttyUSB0 --baud 9600`` or ``--host H``)."""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Callable, Sequence
from itertools import product
from typing import Any, TextIO

from drivers.modbus.bus import EXCEPTION_NAMES, ModbusBus
from drivers.modbus.config import ModbusDevice, ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from drivers.modbus.decode import decode_registers
from drivers.modbus.link import ModbusExceptionError
from drivers.modbus.pdu import FunctionCode, read_request, registers_of
from drivers.modbus.settings import REGISTER_COUNT, RegisterType, ValueType, WordOrder
from drivers.modbus.templates import TEMPLATE_DIR, MeterTemplate, load_templates
from drivers.table import write_table
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.errors import DeviceError, DeviceTimeout

EX_USAGE = 64
EX_UNAVAILABLE = 69
_SWEEP_BAUDS = (9600, 19200, 38400, 4800, 2400, 115200)
_SWEEP_PARITIES = ("N", "E", "O")
_READ_CODE = {
    RegisterType.HOLDING: FunctionCode.READ_HOLDING_REGISTERS,
    RegisterType.INPUT: FunctionCode.READ_INPUT_REGISTERS,
}

ModbusBusConfig = ModbusTcpBus | ModbusRtuBus | ModbusRtuOverTcpBus


def bus_from_options(
    args: argparse.Namespace, load_config: Callable[[Any], Any]
) -> ModbusBusConfig:
    if args.bus:
        if not args.config:
            raise SystemExit("fieldgate: naming a BUS needs -c CONFIG")
        config = load_config(args.config)
        for bus in config.buses:
            if bus.name == args.bus and isinstance(bus, ModbusBusConfig):
                return bus
        names = ", ".join(b.name for b in config.buses if isinstance(b, ModbusBusConfig))
        raise SystemExit(f"fieldgate: no Modbus bus {args.bus!r} in {args.config}; buses: {names}")
    if args.serial:
        return ModbusRtuBus.model_validate(
            {
                "name": "cli",
                "type": "modbus_rtu",
                "port": args.serial,
                "baudrate": args.baud,
                "parity": args.parity,
                "stop_bits": args.stop_bits,
                "timeout": args.timeout,
                "slave_backoff_max": "1s",
            }
        )
    if args.host:
        kind = "modbus_rtu_over_tcp" if args.rtu else "modbus_tcp"
        fields: dict[str, Any] = {"name": "cli", "type": kind, "host": args.host}
        if args.port:
            fields["port"] = args.port
        fields.update(timeout=args.timeout, slave_backoff_max="1s")
        if args.rtu:
            return ModbusRtuOverTcpBus.model_validate(fields)
        return ModbusTcpBus.model_validate(fields)
    raise SystemExit("fieldgate: name a BUS with -c CONFIG, or give --serial PORT or --host HOST")


def open_bus(config: ModbusBusConfig) -> ModbusBus:
    """The bus ``config`` describes, opened as the running gateway opens it: from its
    settings, with one placeholder device (the tools talk to the link directly)."""
    # Imported here so that `fieldgate templates` never imports the serial transport.
    from drivers.modbus.rtu import open_modbus_rtu_bus  # noqa: PLC0415
    from drivers.modbus.tcp import open_modbus_rtu_over_tcp_bus, open_modbus_tcp_bus  # noqa: PLC0415

    placeholder = settings_of(
        ModbusDevice.model_validate(
            {
                "name": "probe",
                "bus": config.name,
                "points": [{"name": "x", "address": 0, "type": "u16"}],
            }
        )
    )
    bus = settings_of(config)
    clock = SystemClock()
    if isinstance(config, ModbusRtuBus):
        return open_modbus_rtu_bus(bus, [placeholder], clock)
    if isinstance(config, ModbusRtuOverTcpBus):
        return open_modbus_rtu_over_tcp_bus(bus, [placeholder], clock)
    return open_modbus_tcp_bus(bus, [placeholder], clock)


# -- templates -----------------------------------------------------------------------------------


def templates_command(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    templates = load_templates()
    if args.action == "list":
        rows = [("name", "medium", "meter", "points")]
        rows += [
            (t.name, t.medium, f"{t.manufacturer} {t.model}", str(len(t.points)))
            for t in templates.values()
        ]
        write_table(rows, out)
        return 0
    if args.name not in templates:
        print(f"no template {args.name!r}; known: {', '.join(templates)}", file=sys.stderr)
        return EX_USAGE
    out.write((TEMPLATE_DIR / f"{args.name}.yaml").read_text())
    return 0


# -- scan ----------------------------------------------------------------------------------------


async def scan_command(
    args: argparse.Namespace, load_config: Callable[[Any], Any], out: TextIO = sys.stdout
) -> int:
    first, _, last = str(args.units).partition("-")
    units = range(int(first), int(last or first) + 1)
    base = bus_from_options(args, load_config)
    settings: list[ModbusBusConfig] = [base]
    if args.sweep and isinstance(base, ModbusRtuBus):
        settings = [
            base.model_copy(update={"baudrate": baud, "parity": parity})
            for baud, parity in product(_SWEEP_BAUDS, _SWEEP_PARITIES)
        ]
    found_any = False
    for config in settings:
        found = await _scan_one(config, units, sys.stderr)
        if found:
            found_any = True
            label = _describe_settings(config)
            rows = [("unit", "answers", "meter")] + [
                (str(unit), how, meter or "-") for unit, how, meter in found
            ]
            print(f"{label}: {len(found)} unit(s) answer", file=out)
            write_table(rows, out)
            if args.sweep:
                break
    if not found_any:
        print("no unit answered", file=out)
        return EX_UNAVAILABLE
    return 0


def _describe_settings(config: ModbusBusConfig) -> str:
    if isinstance(config, ModbusRtuBus):
        framing = f"{config.data_bits}{config.parity.value}{config.stop_bits}"
        return f"{config.port} {config.baudrate} {framing}"
    return f"{config.type} {config.host}:{config.port}"


async def _scan_one(
    config: ModbusBusConfig, units: Sequence[int], progress: TextIO
) -> list[tuple[int, str, str | None]]:
    found: list[tuple[int, str, str | None]] = []
    async with open_bus(config) as bus:
        for index, unit in enumerate(units, 1):
            _progress(progress, index, len(units), unit, len(found))
            try:
                await bus.link.transact(
                    unit, read_request(FunctionCode.READ_HOLDING_REGISTERS, 0, 1)
                )
                how = "registers"
            except ModbusExceptionError as exc:
                # An exception answer is an answer: the unit is there.
                how = f"exception {exc.code}"
            except DeviceTimeout:
                continue
            except DeviceError:
                how = "garbled"
            found.append((unit, how, await _identify(bus, unit)))
    progress.write("\r" + " " * 60 + "\r")
    return found


def _progress(out: TextIO, done: int, total: int, unit: int, found: int) -> None:
    width = 30
    filled = width * done // total
    out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] unit {unit:3d}  found {found}")
    out.flush()


async def _identify(bus: ModbusBus, unit: int) -> str | None:
    for template in load_templates().values():
        if template.identify and await _matches(bus, unit, template):
            return template.name
    return None


async def _matches(bus: ModbusBus, unit: int, template: MeterTemplate) -> bool:
    rule = template.identify
    assert rule is not None
    code = _READ_CODE.get(rule.register_type)
    if code is None:
        return False
    count = REGISTER_COUNT[rule.type]
    try:
        data = await bus.link.transact(unit, read_request(code, rule.address, count))
    except DeviceError:
        return False
    value = decode_registers(registers_of(data), rule.type, template.points[0].word_order)
    return value == rule.equals


# -- probe ---------------------------------------------------------------------------------------

_ORDERS = {
    "ABCD": (False, False),
    "CDAB": (True, False),
    "BADC": (False, True),
    "DCBA": (True, True),
}


def probe_rows(registers: Sequence[int], first: int) -> list[tuple[str, ...]]:
    """Each register address with the value starting there, in every type and byte order."""
    header: tuple[str, ...] = ("addr", "hex", "ascii", "u16", "i16")
    header += tuple(f"{t} {o}" for t in ("u32", "i32", "f32") for o in _ORDERS)
    rows: list[tuple[str, ...]] = [header]
    for offset, word in enumerate(registers):
        row = [
            str(first + offset),
            f"{word:04x}",
            _ascii(word),
            str(word),
            str(struct.unpack(">h", struct.pack(">H", word))[0]),
        ]
        pair = registers[offset : offset + 2]
        for value_type in (ValueType.U32, ValueType.I32, ValueType.F32):
            for swap_words, swap_bytes in _ORDERS.values():
                if len(pair) < 2:
                    row.append("")
                    continue
                row.append(_render(_reorder(pair, swap_words, swap_bytes), value_type))
        rows.append(tuple(row))
    return rows


def _ascii(word: int) -> str:
    """The register's two bytes as text (as a string point reads them), '.' where a byte is
    not printable ASCII."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in word.to_bytes(2, "big"))


def _reorder(words: Sequence[int], swap_words: bool, swap_bytes: bool) -> list[int]:
    ordered = list(reversed(words)) if swap_words else list(words)
    if swap_bytes:
        ordered = [((w & 0xFF) << 8) | (w >> 8) for w in ordered]
    return ordered


def _render(words: list[int], value_type: ValueType) -> str:
    value = decode_registers(words, value_type, WordOrder.BIG)
    return f"{value:.7g}" if isinstance(value, float) else str(value)


async def probe_command(
    args: argparse.Namespace, load_config: Callable[[Any], Any], out: TextIO = sys.stdout
) -> int:
    config = bus_from_options(args, load_config)
    table = RegisterType(args.register)
    code = _READ_CODE.get(table)
    if code is None:
        print("probe reads holding or input registers", file=sys.stderr)
        return EX_USAGE
    async with open_bus(config) as bus:
        try:
            data = await bus.link.transact(args.unit, read_request(code, args.address, args.count))
        except ModbusExceptionError as exc:
            name = EXCEPTION_NAMES.get(exc.code, "unknown exception")
            print(f"unit {args.unit}: exception {exc.code} ({name})", file=sys.stderr)
            return EX_UNAVAILABLE
        except DeviceError as exc:
            print(f"unit {args.unit}: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
    write_table(probe_rows(registers_of(data), args.address), out)
    return 0
