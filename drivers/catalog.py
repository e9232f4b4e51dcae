"""The one table of built-in drivers' config models (for validation and the JSON Schema), and
the technician's tools. Which module opens a bus of each type is in :mod:`drivers.factories`.

Adding a protocol is one package in ``drivers/`` plus one entry here and one there; the core's
data path does not change.
"""

from __future__ import annotations

import importlib
import typing
from typing import Annotated

from pydantic import Field, Tag

from drivers.ble.config import BleBus, BleDevice
from drivers.host.config import HostBus, HostDevice
from drivers.modbus.config import (
    ModbusDevice,
    ModbusRtuBus,
    ModbusRtuOverTcpBus,
    ModbusTcpBus,
)
from gateway.config.fields import DeviceBase

#: Every bus kind a config may name, told apart by its ``type`` key.
BusConfig = Annotated[
    ModbusTcpBus | ModbusRtuBus | ModbusRtuOverTcpBus | HostBus | BleBus,
    Field(discriminator="type"),
]

#: Every device kind, each tagged with its class name. A device has no key that tells its kind:
#: the config chooses the model its bus names (``device_model``) before validating it.
DeviceConfig = (
    Annotated[ModbusDevice, Tag(ModbusDevice.__name__)]
    | Annotated[HostDevice, Tag(HostDevice.__name__)]
    | Annotated[BleDevice, Tag(BleDevice.__name__)]
)

_DEVICE_MODELS: dict[object, type[DeviceBase]] = {
    bus_type: bus_model.device_model
    for bus_model in typing.get_args(typing.get_args(BusConfig)[0])
    for bus_type in typing.get_args(bus_model.model_fields["type"].annotation)
}


def device_model_of(bus_type: object) -> type[DeviceBase] | None:
    """The device model a bus of ``bus_type`` reaches; ``None`` if no bus has that type."""
    return _DEVICE_MODELS.get(bus_type) if isinstance(bus_type, str) else None


def _scans_ble(args: object, load_config: object) -> bool:
    """``scan ble`` (no config), or ``scan -c FILE BUS`` where BUS is a BLE bus of FILE."""
    bus = getattr(args, "bus", None)
    config_path = getattr(args, "config", None)
    if config_path is None or not callable(load_config):
        return bus == "ble"
    config = load_config(config_path)
    named = [b for b in config.buses if b.name == bus]
    return isinstance(named[0], BleBus) if named else bus == "ble"


def run_tool(command: str, args: object, load_config: object) -> int:
    """Run a technician command (``templates``, ``scan``, ``probe``) with the parsed command
    line. ``load_config`` is the core's config loader, for a bus named from the config file."""
    import asyncio  # noqa: PLC0415

    if command == "scan" and _scans_ble(args, load_config):
        ble_tools = importlib.import_module("drivers.ble.tools")
        found: int = asyncio.run(ble_tools.scan_command(args, load_config))
        return found
    tools = importlib.import_module("drivers.modbus.tools")
    if command == "templates":
        result: int = tools.templates_command(args)
    elif command == "scan":
        result = asyncio.run(tools.scan_command(args, load_config))
    else:
        result = asyncio.run(tools.probe_command(args, load_config))
    return result
