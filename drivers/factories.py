"""Which module opens a bus of each ``type``, imported only when a bus of that type is opened:
a gateway with only Modbus buses never imports bleak, and the core never imports a protocol
library. Free of pydantic: the running gateway opens its buses from settings
(:mod:`gateway.settings`); the config models of each type are in :mod:`drivers.catalog`.
"""

from __future__ import annotations

import importlib

from gateway.driver import BusDriverFactory

#: ``type`` of a bus -> "module:factory" that opens it.
DRIVERS: dict[str, str] = {
    "modbus_tcp": "drivers.modbus.tcp:open_modbus_tcp_bus",
    "modbus_rtu": "drivers.modbus.rtu:open_modbus_rtu_bus",
    "modbus_rtu_over_tcp": "drivers.modbus.tcp:open_modbus_rtu_over_tcp_bus",
    "host": "drivers.host.driver:open_host_bus",
    "ble": "drivers.ble.driver:open_ble_bus",
}


def bus_driver_factory(bus_type: str) -> BusDriverFactory:
    """The factory for buses of ``bus_type`` (a value the config schema allows)."""
    module_name, _, attribute = DRIVERS[bus_type].partition(":")
    factory: BusDriverFactory = getattr(importlib.import_module(module_name), attribute)
    return factory
