"""The one table of built-in drivers: their config models (for validation and the JSON Schema)
and, imported only when a bus of that type is opened, their implementation.

Adding a protocol is one module in ``drivers/`` plus one entry here; the core's data path does
not change.
"""

from __future__ import annotations

import importlib
from typing import Annotated

from pydantic import Field

from drivers.modbus.config import ModbusDevice, ModbusTcpBus
from gateway.driver import BusDriverFactory

#: Every bus kind a config may name, told apart by its ``type`` key.
BusConfig = Annotated[ModbusTcpBus, Field(discriminator="type")]

#: Every device kind. One member today; a new kind joins this union and names its model in its
#: bus's ``device_model``.
DeviceConfig = ModbusDevice

#: ``type`` of a bus -> "module:factory" that opens it. Imported lazily, so that a gateway with
#: only Modbus buses never imports bleak, and the core never imports a protocol library.
_DRIVERS: dict[str, str] = {
    "modbus_tcp": "drivers.modbus.tcp:open_modbus_tcp_bus",
}


def bus_driver_factory(bus_type: str) -> BusDriverFactory:
    """The factory for buses of ``bus_type`` (a value the config schema allows)."""
    module_name, _, attribute = _DRIVERS[bus_type].partition(":")
    factory: BusDriverFactory = getattr(importlib.import_module(module_name), attribute)
    return factory
