"""A Modbus bus: one client connection shared by the devices behind it, used one request at a
time, re-made with backoff when it breaks. Transport-independent: TCP, RTU and RTU-over-TCP
differ only in the client they build (see :mod:`.tcp`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.modbus.config import ModbusDevice, RegisterType
from drivers.modbus.decode import decode_registers, scale_value
from drivers.modbus.plan import ReadRequest, plan_requests
from gateway.backoff import Backoff
from gateway.clock import Clock, epoch_ms
from gateway.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from gateway.readings import PointValue, Reading, reading_from_values

log = logging.getLogger(__name__)

#: Modbus exception codes, for error messages a technician can act on.
_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusBus:
    """Owns the client of one bus. Devices on it are read one at a time: a Modbus line (and
    most TCP gateways in front of one) handles one transaction at a time."""

    def __init__(
        self,
        describe: str,
        make_client: Callable[[], ModbusBaseClient],
        devices: Sequence[ModbusDevice],
        clock: Clock,
        reconnect_max: float,
    ) -> None:
        self._describe = describe
        self._make_client = make_client
        self._clock = clock
        self._client: ModbusBaseClient | None = None
        self._lock = asyncio.Lock()
        self._backoff = Backoff(base=0.5, cap=reconnect_max)
        self._devices = [ModbusPolledDevice(self, device) for device in devices]

    @property
    def devices(self) -> Sequence[ModbusPolledDevice]:
        return self._devices

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._drop_connection()

    async def read(self, device: ModbusDevice, requests: Sequence[ReadRequest]) -> Reading:
        async with self._lock:
            client = await self._connected_client()
            read_at_ms = epoch_ms(self._clock)
            values: list[PointValue] = []
            refused: list[str] = []
            for request in requests:
                try:
                    registers = await self._execute(client, device, request)
                except DeviceProtocolError as exc:
                    # The device is there but refused this block: the other blocks still count.
                    refused.append(str(exc))
                    values += [PointValue(p.name, None, p.unit) for p in request.points]
                    continue
                values += [
                    PointValue(
                        point.name,
                        scale_value(
                            decode_registers(
                                request.registers_of(point, registers), point.type, point.word_order
                            ),
                            point.scale,
                            point.offset,
                        ),
                        point.unit,
                    )
                    for point in request.points
                ]
            if len(refused) == len(requests):
                raise DeviceProtocolError("; ".join(refused))
            return reading_from_values(device.name, read_at_ms, tuple(values))

    async def _connected_client(self) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        self._drop_connection()
        now = self._clock.monotonic()
        if not self._backoff.may_attempt(now):
            wait = self._backoff.next_attempt_at - now
            raise DeviceUnreachable(f"{self._describe}: not connected; next attempt in {wait:.1f}s")
        client = self._make_client()
        try:
            connected = await client.connect()
        except (OSError, ModbusException) as exc:
            connected = False
            log.debug("connect to %s failed: %s", self._describe, exc)
        if not connected:
            client.close()
            delay = self._backoff.failed(self._clock.monotonic())
            raise DeviceUnreachable(
                f"{self._describe}: cannot connect; next attempt in {delay:.1f}s"
            )
        self._backoff.succeeded()
        self._client = client
        return client

    async def _execute(
        self, client: ModbusBaseClient, device: ModbusDevice, request: ReadRequest
    ) -> list[int]:
        read = (
            client.read_holding_registers
            if request.register_type is RegisterType.HOLDING
            else client.read_input_registers
        )
        try:
            response = await read(request.address, count=request.count, device_id=device.unit_id)
        except ConnectionException as exc:
            self._drop_connection()
            what = self._what(device, request)
            raise DeviceUnreachable(f"{what}: connection lost ({exc})") from exc
        except ModbusIOException as exc:
            # No answer in time, or an answer to another request: either way the line is in an
            # unknown state, so the next read starts on a fresh connection.
            self._drop_connection()
            what = self._what(device, request)
            raise DeviceTimeout(f"{what}: no valid answer within the timeout") from exc
        except ModbusException as exc:
            raise DeviceProtocolError(f"{self._what(device, request)}: {exc}") from exc
        if response.isError():
            code = getattr(response, "exception_code", 0)
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            what = self._what(device, request)
            raise DeviceProtocolError(f"{what}: exception {code} ({name})")
        registers = list(response.registers)
        if len(registers) != request.count:
            raise DeviceProtocolError(
                f"{self._what(device, request)}: answered {len(registers)} registers "
                f"instead of {request.count}"
            )
        return registers

    def _what(self, device: ModbusDevice, request: ReadRequest) -> str:
        """The request, as an error message names it (built only when there is an error)."""
        last = request.address + request.count - 1
        return (
            f"{request.register_type} registers {request.address}...{last} "
            f"of unit {device.unit_id} on {self._describe}"
        )

    def _drop_connection(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class ModbusPolledDevice:
    """One Modbus device, with its read requests planned once at start."""

    def __init__(self, bus: ModbusBus, config: ModbusDevice) -> None:
        self._bus = bus
        self._config = config
        self._requests = plan_requests(config.points, max_gap=config.max_gap)

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def requests(self) -> Sequence[ReadRequest]:
        return self._requests

    async def read(self) -> Reading:
        return await self._bus.read(self._config, self._requests)
