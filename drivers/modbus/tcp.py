"""Modbus TCP: a meter with an Ethernet port, or a TCP gateway in front of an RS-485 line."""

from __future__ import annotations

from collections.abc import Sequence

from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.bus import ModbusBus
from drivers.modbus.config import ModbusDevice, ModbusTcpBus
from gateway.clock import Clock


def open_modbus_tcp_bus(
    bus: ModbusTcpBus, devices: Sequence[ModbusDevice], clock: Clock
) -> ModbusBus:
    def make_client() -> AsyncModbusTcpClient:
        # reconnect_delay=0: pymodbus must not reconnect on its own; ModbusBus does, with
        # jittered backoff. retries=0: a missed answer is reported now, the next poll retries.
        return AsyncModbusTcpClient(
            bus.host,
            port=bus.port,
            timeout=bus.timeout,
            retries=0,
            reconnect_delay=0,
        )

    return ModbusBus(
        f"modbus_tcp {bus.name} ({bus.host}:{bus.port})",
        make_client,
        devices,
        clock,
        reconnect_max=bus.reconnect_max,
    )
