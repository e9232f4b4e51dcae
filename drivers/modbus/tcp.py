"""Modbus TCP: a meter with an Ethernet port, or a TCP gateway in front of an RS-485 line
(several unit ids share its one connection)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from drivers.modbus.bus import ModbusBus
from drivers.modbus.link import Framing, ModbusLink, Opener
from drivers.modbus.settings import (
    ModbusDeviceSettings,
    ModbusRtuOverTcpBusSettings,
    ModbusTcpBusSettings,
)
from gateway.clock import Clock


def tcp_opener(host: str, port: int) -> Opener:
    async def open_tcp(
        factory: Callable[[], asyncio.Protocol],
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        return await asyncio.get_running_loop().create_connection(factory, host, port)

    return open_tcp  # type: ignore[return-value]


def open_modbus_tcp_bus(
    bus: ModbusTcpBusSettings, devices: Sequence[ModbusDeviceSettings], clock: Clock
) -> ModbusBus:
    link = ModbusLink(
        f"modbus_tcp {bus.name} ({bus.host}:{bus.port})",
        tcp_opener(bus.host, bus.port),
        Framing.MBAP,
        clock,
        timeout=bus.timeout,
        reconnect_max=bus.reconnect_max,
    )
    return ModbusBus(link, devices, clock, slave_backoff_max=bus.slave_backoff_max)


def open_modbus_rtu_over_tcp_bus(
    bus: ModbusRtuOverTcpBusSettings, devices: Sequence[ModbusDeviceSettings], clock: Clock
) -> ModbusBus:
    link = ModbusLink(
        f"modbus_rtu_over_tcp {bus.name} ({bus.host}:{bus.port})",
        tcp_opener(bus.host, bus.port),
        Framing.RTU,
        clock,
        timeout=bus.timeout,
        reconnect_max=bus.reconnect_max,
        turnaround=bus.turnaround,
    )
    return ModbusBus(link, devices, clock, slave_backoff_max=bus.slave_backoff_max)
