"""The ``fieldgate`` command: run, check, read, schema.

Imports only what every command needs at the top: ``run`` must catch a stop signal from its
first moments, before the config models (pydantic, the drivers' catalog) have been imported.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError, DeviceError, StorageError
from gateway.shutdown import ShutdownRequest

if TYPE_CHECKING:
    from gateway.config.model import GatewayConfig

#: sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus keeps a bad config from looping.
EX_CONFIG = 78
#: Exit status of ``read`` when the device did not answer.
EX_UNAVAILABLE = 69
#: sysexits.h EX_CANTCREAT: the buffer file cannot be opened or created.
EX_CANTCREAT = 73

log = logging.getLogger("gateway")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    shutdown = ShutdownRequest(end_hard=True)
    if command == "run":
        # First thing: from here on a SIGTERM is a request to stop, not the end of the process.
        shutdown.install()
    _configure_logging(args.verbose)
    # Imported here, not at the top: see the module's docstring.
    from gateway.config.loader import config_json_schema_text, load_config  # noqa: PLC0415

    if command == "schema":
        sys.stdout.write(config_json_schema_text())
        return 0
    config_path: Path = args.config
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"{config_path}: configuration is not valid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    if command == "check":
        print(f"{config_path}: OK ({len(config.buses)} bus(es), {len(config.devices)} device(s))")
        return 0
    if command == "read":
        return asyncio.run(_read_now(config, args.device))
    from gateway.service import run_gateway  # noqa: PLC0415 - only `run` needs the daemon

    try:
        asyncio.run(run_gateway(config, shutdown))
    except StorageError as exc:
        log.critical("%s", exc)
        return EX_CANTCREAT
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fieldgate",
        description="Polls field meters, buffers every reading locally, forwards over MQTT.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the gateway (what the systemd unit starts)")
    run.add_argument("-c", "--config", type=Path, required=True, help="the YAML config file")
    check = commands.add_parser("check", help="validate a config file; exit 78 if invalid")
    check.add_argument("config", type=Path, help="the YAML config file")
    read = commands.add_parser("read", help="poll one device now and print its values")
    read.add_argument("-c", "--config", type=Path, required=True, help="the YAML config file")
    read.add_argument("device", help="the device's name in the config")
    commands.add_parser("schema", help="print the JSON Schema of the config file")
    return parser


async def _read_now(config: GatewayConfig, device_name: str) -> int:
    from drivers.catalog import bus_driver_factory  # noqa: PLC0415
    from gateway.clock import SystemClock  # noqa: PLC0415

    device_config = next((d for d in config.devices if d.name == device_name), None)
    if device_config is None:
        names = ", ".join(d.name for d in config.devices)
        print(f"no device {device_name!r} in the config; devices: {names}", file=sys.stderr)
        return EX_CONFIG
    bus_config = next(b for b in config.buses if b.name == device_config.bus)
    factory = bus_driver_factory(bus_config.type)
    async with factory(bus_config, [device_config], SystemClock()) as bus:
        try:
            reading = await bus.devices[0].read()
        except DeviceError as exc:
            print(f"{device_name}: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
    rows = [("point", "value", "unit")]
    rows += [(p.name, _show(p.value), p.unit or "") for p in reading.values]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"{device_name} read at {reading.read_at.isoformat(timespec='milliseconds')}")
    for name, value, unit in rows:
        print(f"{name:<{widths[0]}}  {value:>{widths[1]}}  {unit}".rstrip())
    return 0


def _show(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _configure_logging(verbose: bool) -> None:
    # journald adds its own timestamps; the level and logger are what a reader needs.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        # pymodbus logs every timeout at ERROR; fieldgate reports device failures itself, once
        # per outage with the device's name, so pymodbus's own lines would only be noise.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


if __name__ == "__main__":
    sys.exit(main())
