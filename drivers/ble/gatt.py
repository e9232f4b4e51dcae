"""GATT devices: connect, read (or take the first notification of) each configured
characteristic, disconnect; the bytes decoded with the Modbus points' number handling (scale,
offset, shortest float32), little-endian unless configured otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError

from drivers.ble.settings import BleDeviceSettings, GattMode, GattPointSettings, GattType
from drivers.modbus.decode import scale_value, shortest_float32
from drivers.modbus.settings import ByteOrder
from gateway.clock import Clock, epoch_ms
from gateway.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from gateway.readings import PointValue, Reading, reading_from_values

if TYPE_CHECKING:
    from drivers.ble.driver import ConnectionBudget

log = logging.getLogger(__name__)

_STRUCT_CODE: dict[GattType, str] = {
    GattType.U8: "B",
    GattType.I8: "b",
    GattType.U16: "H",
    GattType.I16: "h",
    GattType.U32: "I",
    GattType.I32: "i",
    GattType.U64: "Q",
    GattType.I64: "q",
    GattType.F32: "f",
    GattType.F64: "d",
}
#: Disconnecting is a courtesy to the device: never worth more than this.
_DISCONNECT_TIMEOUT = 5.0


def decode_characteristic(point: GattPointSettings, data: bytes) -> int | float | str:
    """The value of ``point`` in a characteristic's bytes. Raises ValueError if they are too
    short for it."""
    if point.type is GattType.STRING:
        text = data[point.offset_bytes :].split(b"\0", 1)[0]
        return text.decode("utf-8", errors="replace")
    order = "<" if point.byte_order is ByteOrder.LITTLE else ">"
    layout = struct.Struct(order + _STRUCT_CODE[point.type])
    if len(data) < point.offset_bytes + layout.size:
        raise ValueError(f"{len(data)} bytes hold no {point.type} at byte {point.offset_bytes}")
    raw: int | float = layout.unpack_from(data, point.offset_bytes)[0]
    if point.type is GattType.F32 and isinstance(raw, float):
        raw = shortest_float32(raw)
    return scale_value(raw, point.scale, point.offset)


class GattDevice:
    """A :class:`~gateway.driver.PolledDevice`: one connection per poll, within the adapter's
    connection budget; a connect that takes longer than ``connect_timeout`` is abandoned."""

    def __init__(  # noqa: PLR0917 - built in one place, from the bus's parts
        self,
        config: BleDeviceSettings,
        adapter: str,
        budget: ConnectionBudget,
        find: Callable[[str], BLEDevice | None],
        scanning: Callable[[], bool],
        clock: Clock,
        connect_timeout: float,
        *,
        passive: bool = False,
    ) -> None:
        assert config.address is not None  # the config requires it for GATT
        self._config = config
        self._address = config.address
        self._adapter = adapter
        self._budget = budget
        self._find = find
        self._scanning = scanning
        self._clock = clock
        self._timeout = connect_timeout
        self._passive = passive

    @property
    def name(self) -> str:
        return self._config.name

    async def read(self) -> Reading:
        device = self._find(self._address)
        if device is None and not self._scanning():
            device = await self._look_for_it()
        if device is None:
            why = (
                # BlueZ's advertisement monitor passes on only what matches its patterns.
                "a passive scan hears only advertisements in the formats fieldgate decodes; "
                "set scanning: active for GATT devices"
                if self._passive
                else "out of range, or the adapter does not scan"
            )
            raise DeviceUnreachable(
                f"{self._address} is not advertising on {self._adapter} ({why})"
            )
        async with self._budget.slot():
            client = BleakClient(device, timeout=self._timeout, bluez={"adapter": self._adapter})
            await self._connect(client)
            try:
                read_at_ms = epoch_ms(self._clock)
                values = [await self._value(client, point) for point in self._config.points]
            finally:
                await self._disconnect(client)
        return reading_from_values(self.name, read_at_ms, tuple(values))

    async def _look_for_it(self) -> BLEDevice | None:
        """No scan of the bus runs (`fieldgate read`, or the adapter is in trouble): listen
        for it once, for at most the connect timeout."""
        try:
            found: BLEDevice | None = await BleakScanner.find_device_by_address(
                self._address, timeout=self._timeout, bluez={"adapter": self._adapter}
            )
        except (BleakError, OSError, EOFError) as exc:
            raise DeviceUnreachable(f"cannot scan for {self._address}: {exc}") from None
        return found

    async def _connect(self, client: BleakClient) -> None:
        self._budget.connects += 1
        try:
            # bleak has its own timeout; ours also covers what bleak does around it.
            async with asyncio.timeout(self._timeout + 1.0):
                await client.connect()
        except TimeoutError:
            self._budget.timeouts += 1
            await self._disconnect(client)
            raise DeviceTimeout(
                f"connect to {self._address} did not finish within {self._timeout:g}s; abandoned"
            ) from None
        except BleakError as exc:
            raise DeviceUnreachable(f"connect to {self._address} failed: {exc}") from None

    async def _value(self, client: BleakClient, point: GattPointSettings) -> PointValue:
        try:
            async with asyncio.timeout(self._timeout):
                if point.mode is GattMode.NOTIFY:
                    data = await _first_notification(client, point.characteristic)
                else:
                    data = bytes(await client.read_gatt_char(point.characteristic))
        except TimeoutError:
            self._budget.timeouts += 1
            raise DeviceTimeout(
                f"{point.name} ({point.characteristic}) gave no value within {self._timeout:g}s"
            ) from None
        except BleakError as exc:
            raise DeviceProtocolError(
                f"{point.name} ({point.characteristic}) cannot be read: {exc}"
            ) from None
        try:
            value: int | float | str | None = decode_characteristic(point, data)
        except ValueError as exc:
            log.debug("%s: %s: %s", self.name, point.name, exc)
            value = None
        return PointValue(point.name, value, point.unit)

    async def _disconnect(self, client: BleakClient) -> None:
        with contextlib.suppress(BleakError, TimeoutError, EOFError, OSError):
            async with asyncio.timeout(_DISCONNECT_TIMEOUT):
                await client.disconnect()


async def _first_notification(client: BleakClient, uuid: str) -> bytes:
    first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def received(_characteristic: BleakGATTCharacteristic, data: bytearray) -> None:
        if not first.done():
            first.set_result(bytes(data))

    await client.start_notify(uuid, received)
    try:
        return await first
    finally:
        with contextlib.suppress(BleakError, EOFError, OSError):
            await client.stop_notify(uuid)
