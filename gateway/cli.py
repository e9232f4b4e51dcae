"""The ``fieldgate`` command: run, check, read, schema.

Imports only what every command needs at the top: ``run`` must catch a stop signal from its
first moments, and never imports the config models at all (pydantic, YAML, the drivers'
catalog): it reads its config as settings (see gateway.config.isolated).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import version
from gateway.buffer_report import add_buffer_parser
from gateway.config import DEFAULT_CONFIG_PATH
from gateway.errors import ConfigError, DeviceError, StorageError
from gateway.journal import configure_logging
from gateway.shutdown import ShutdownRequest

if TYPE_CHECKING:
    from gateway.config.model import GatewayConfig
    from gateway.settings import GatewaySettings

#: sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus keeps a bad config from looping.
EX_CONFIG = 78
#: Exit status of ``read`` when the device did not answer.
EX_UNAVAILABLE = 69
#: sysexits.h EX_CANTCREAT: the buffer file cannot be opened or created.
EX_CANTCREAT = 73
DEFAULT_CONFIG = DEFAULT_CONFIG_PATH

_EXIT_CODES = """exit codes:
  0   done (run: stopped cleanly on SIGTERM)
  2   wrong use of the command line
  64  scan, probe, templates: no bus, port or host to use, or an unknown template
  69  the device did not answer (read)
  70  the gateway did not stop within gateway.stop_timeout and was ended (run)
  73  the buffer file cannot be opened or created (run)
  74  buffer export: the output cannot be written
  78  the config file is not valid: each mistake is named with file, line and key
"""

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    shutdown = ShutdownRequest(end_hard=True)
    if command == "run":
        # First thing: from here on a SIGTERM is a request to stop, not the end of the process.
        shutdown.install()
    configure_logging(args.verbose)
    if command in {"schema", "templates", "scan", "probe", "buffer"}:
        return _without_config(command, args)
    config_path: Path = getattr(args, "file", None) or args.config
    if command == "run":
        return _run(config_path, shutdown)
    # Imported here, not at the top: see the module's docstring.
    from gateway.config.loader import load_config  # noqa: PLC0415

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return _refused(config_path, exc)
    if command == "check":
        from gateway.config.loader import config_warnings  # noqa: PLC0415 - as above

        for warning in config_warnings(config, config_path):
            print(warning, file=sys.stderr)
        print(f"{config_path}: OK ({len(config.buses)} bus(es), {len(config.devices)} device(s))")
        return 0
    from gateway.config.handover import to_settings  # noqa: PLC0415 - as above

    return asyncio.run(_read_now(to_settings(config), args.device))


def _run(config_path: Path, shutdown: ShutdownRequest) -> int:
    """``run``: the daemon, with its config read as settings (see gateway.config.isolated):
    this process never imports pydantic nor YAML."""
    from gateway.config.isolated import read_settings  # noqa: PLC0415 - see the docstring

    try:
        settings = read_settings(config_path)
    except ConfigError as exc:
        return _refused(config_path, exc)
    from gateway.service import run_gateway  # noqa: PLC0415 - only `run` needs the daemon

    try:
        asyncio.run(run_gateway(settings, shutdown, config_path=config_path))
    except StorageError as exc:
        log.critical("%s", exc)
        return EX_CANTCREAT
    return 0


def _refused(config_path: Path, exc: ConfigError) -> int:
    print(f"{config_path}: configuration is not valid:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EX_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldgate",
        description="Polls field meters, buffers every reading locally, forwards over MQTT.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # The same options after the sub-command too (`fieldgate run -v`). SUPPRESS: a -v given
    # before the sub-command is not reset by the sub-command's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    with_config = argparse.ArgumentParser(add_help=False)
    with_config.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"the YAML config file (default {DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, *, config: bool) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=help_text,
            parents=[common, with_config] if config else [common],
            epilog=_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    command("run", "run the gateway (what the systemd unit starts)", config=True)
    check = command("check", "validate the config file; exit 78 if invalid", config=True)
    check.add_argument(
        "file", type=Path, nargs="?", help="the config file, as with -c (kept for habit)"
    )
    read = command("read", "poll one device now and print its values", config=True)
    read.add_argument("device", help="the device's name in the config")
    command("schema", "print the JSON Schema of the config file", config=False)
    add_buffer_parser(commands, parents=[common])
    _add_modbus_tools(commands, parents=[common])
    return parser


def _add_modbus_tools(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    templates = commands.add_parser(
        "templates", help="list meter templates, or show one", parents=parents
    )
    actions = templates.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every template: name, medium, meter, points")
    actions.add_parser("show", help="a template's YAML").add_argument("name")
    scan = commands.add_parser(
        "scan",
        help="which Modbus unit ids answer on a bus; `scan ble`: which BLE sensors advertise",
        parents=parents,
    )
    scan.add_argument("--adapter", default="hci0", help="scan ble: the adapter (hci0)")
    scan.add_argument(
        "--seconds", type=float, default=10.0, help="scan ble: how long to listen (10)"
    )
    scan.add_argument("--units", default="1-247", help="unit ids to try, e.g. 1-247 or 5")
    scan.add_argument(
        "--sweep", action="store_true", help="serial: try common baud rates and parities"
    )
    probe = commands.add_parser(
        "probe", help="read raw registers; show them in every type and byte order", parents=parents
    )
    probe.add_argument("--unit", type=int, default=1, help="unit id (1)")
    probe.add_argument("--register", choices=["holding", "input"], default="holding")
    probe.add_argument("--address", type=lambda text: int(text, 0), default=0)
    probe.add_argument("--count", type=int, default=10, help="registers to read (10)")
    for tool in (scan, probe):
        tool.add_argument(
            "bus", nargs="?", help="a bus of the config file given with -c (scan: or ble)"
        )
        tool.add_argument("-c", "--config", type=Path, help="the YAML config file with BUS")
        tool.add_argument("--serial", metavar="PORT", help="a serial port, e.g. /dev/ttyUSB0")
        tool.add_argument("--baud", type=int, default=9600, help="serial baud rate (9600)")
        tool.add_argument("--parity", choices=["N", "E", "O"], default="N")
        tool.add_argument("--stop-bits", type=int, choices=[1, 2], default=1)
        tool.add_argument("--host", help="Modbus TCP host (with --rtu: a serial device server)")
        tool.add_argument("--port", type=int, help="TCP port (502; 4001 with --rtu)")
        tool.add_argument("--rtu", action="store_true", help="RTU frames over TCP")
        tool.add_argument("--timeout", default="200ms", help="answer timeout (200ms)")


def _without_config(command: str, args: argparse.Namespace) -> int:
    """The commands that run without a config file (scan and probe may name one)."""
    if command == "schema":
        from gateway.config.loader import config_json_schema_text  # noqa: PLC0415

        sys.stdout.write(config_json_schema_text())
        return 0
    if command == "buffer":  # -c or --file: the file may be a moved-aside one
        from gateway import buffer_report  # noqa: PLC0415 - only `buffer` needs sqlite-utils

        return buffer_report.run_command(args, _load_config_or_exit)
    from drivers.catalog import run_tool  # noqa: PLC0415 - Modbus tools, only when asked

    return run_tool(command, args, _load_config_or_exit)


def _load_config_or_exit(path: Path) -> GatewayConfig:
    from gateway.config.loader import load_config  # noqa: PLC0415

    try:
        return load_config(path)
    except ConfigError as exc:
        raise SystemExit(_refused(path, exc)) from None


async def _read_now(config: GatewaySettings, device_name: str) -> int:
    from drivers.factories import bus_driver_factory  # noqa: PLC0415
    from gateway.clock import SystemClock  # noqa: PLC0415

    device_config = next((d for d in config.devices if d.name == device_name), None)
    if device_config is None:
        names = ", ".join(d.name for d in config.devices)
        print(f"no device {device_name!r} in the config; devices: {names}", file=sys.stderr)
        return EX_CONFIG
    bus_config = next(b for b in config.buses if b.name == device_config.bus)
    factory = bus_driver_factory(bus_config.type)
    async with factory(bus_config, [device_config], SystemClock()) as bus:
        polled = next((d for d in bus.devices if d.name == device_name), None)
        if polled is None:
            print(
                f"{device_name} is not read on demand: its readings stream in as it sends them "
                "(a BLE advertiser: `fieldgate scan ble` shows what it sends)",
                file=sys.stderr,
            )
            return EX_UNAVAILABLE
        try:
            reading = await polled.read()
        except DeviceError as exc:
            print(f"{device_name}: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
        # A driver may say why values are missing (the Modbus driver does: a refused range, a
        # garbled answer); the payload carries only null, so this is where a technician sees it.
        why: dict[str, str] = dict(getattr(polled, "last_missing", {}))
    rows = [("point", "value", "unit")]
    rows += [(p.name, _show(p.value), p.unit or "") for p in reading.values]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"{device_name} read at {reading.read_at.isoformat(timespec='milliseconds')}")
    for name, value, unit in rows:
        reason = f"  ({why[name]})" if name in why and value == "-" else ""
        print(f"{name:<{widths[0]}}  {value:>{widths[1]}}  {unit:<{widths[2]}}{reason}".rstrip())
    return 0


def _show(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
