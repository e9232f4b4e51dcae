"""Modbus RTU on a serial port (RS-485), through pymodbus's asyncio transport over pyserial.

The port is opened exclusively (one owner per port); frames are timed by the line's character
time: 3.5 characters of silence before each request, and the wait for an answer counts from
the moment the request has left the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from pymodbus.transport.serialtransport import create_serial_connection

from drivers.modbus.bus import ModbusBus
from drivers.modbus.link import Framing, ModbusLink, Opener
from drivers.modbus.settings import ModbusDeviceSettings, ModbusRtuBusSettings
from gateway.clock import Clock


def serial_opener(bus: ModbusRtuBusSettings) -> Opener:
    async def open_serial(
        factory: Callable[[], asyncio.Protocol],
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        transport, protocol = await create_serial_connection(
            asyncio.get_running_loop(),
            factory,
            bus.port,
            baudrate=bus.baudrate,
            bytesize=bus.data_bits,
            parity=bus.parity.value,
            stopbits=bus.stop_bits,
            timeout=0,
        )
        return transport, protocol

    return open_serial  # type: ignore[return-value]


def open_modbus_rtu_bus(
    bus: ModbusRtuBusSettings, devices: Sequence[ModbusDeviceSettings], clock: Clock
) -> ModbusBus:
    link = ModbusLink(
        f"modbus_rtu {bus.name} ({bus.port} {bus.baudrate} {bus.data_bits}"
        f"{bus.parity.value}{bus.stop_bits})",
        serial_opener(bus),
        Framing.RTU,
        clock,
        timeout=bus.timeout,
        reconnect_max=bus.reconnect_max,
        char_time=bus.char_time,
        silence=bus.silence,
        turnaround=bus.turnaround or 0.0,
    )
    return ModbusBus(link, devices, clock, slave_backoff_max=bus.slave_backoff_max)
