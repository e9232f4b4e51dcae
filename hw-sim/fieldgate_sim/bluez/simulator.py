"""The simulated BlueZ: an adapter, sensors that advertise while it discovers (each in its own
format, with values that change), a GATT sensor, and the faults the field has: a sensor that
vanishes, a connect that fails or hangs, garbage advertisements, an adapter powered off.

:class:`SimulatedBluetooth` runs it all beside a test (a private bus, the simulator on a thread
of its own); ``fieldgate-sim ble`` runs it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from fieldgate_sim.bluez import formats
from fieldgate_sim.bluez.bus import PrivateBus
from fieldgate_sim.bluez.monitor import Monitor, Monitors, advertising_data
from fieldgate_sim.bluez.objects import Adapter, Device, GattCharacteristic, GattService, Links
from fieldgate_sim.modbus_server import _LoopThread

_T = TypeVar("_T")

#: A key for the simulated encrypted sensors (test data: it protects nothing).
DEMO_BIND_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


class Kind(StrEnum):
    BTHOME = "bthome"
    BTHOME_ENCRYPTED = "bthome-encrypted"
    RUUVI = "ruuvi"
    PVVX = "pvvx"
    #: pvvx's custom format encrypted with the bind key.
    PVVX_ENCRYPTED = "pvvx-encrypted"
    ATC1441 = "atc1441"
    GOVEE = "govee"
    THERMOPRO = "thermopro"
    MIBEACON = "mibeacon"
    #: MiBeacon v5 encrypted with the bind key (a LYWSD03MMC): one measurement an advert.
    MIBEACON_ENCRYPTED = "mibeacon-encrypted"
    #: Random bytes under the UUIDs and company ids of the formats above.
    GARBAGE = "garbage"
    #: No data in its advertisements; temperature, humidity and battery over GATT.
    GATT = "gatt"
    #: An iBeacon (Apple's manufacturer data): nothing the gateway reads, and nothing the
    #: gateway's passive-scan patterns let through.
    IBEACON = "ibeacon"


#: GATT: Environmental Sensing (0x181A) with temperature (0x2A6E, i16 0.01 °C, read and
#: notify) and humidity (0x2A6F, u16 0.01 %); Battery (0x180F) with its level (0x2A19, u8 %).
GATT_TEMPERATURE = formats.uuid16(0x2A6E)
GATT_HUMIDITY = formats.uuid16(0x2A6F)
GATT_BATTERY = formats.uuid16(0x2A19)


@dataclass
class SimSensor:
    """One simulated sensor. ``sent`` keeps the values of what it advertised (or answered over
    GATT), newest last, as the format carried them: what the gateway must publish."""

    kind: Kind
    address: str
    name: str
    every: float = 1.0
    key: bytes | None = None
    seed: int = 0
    silent: bool = False
    count: int = 0
    sent: list[dict[str, float]] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)

    def _weather(self) -> tuple[float, float, int]:
        step = self.count + self.seed * 13
        temperature = 4.0 + 3.0 * math.sin(step / 7)  # a cold room
        humidity = 60.0 + 8.0 * math.cos(step / 11)
        battery = 90 - (step // 50) % 20
        return temperature, humidity, battery

    def payload(self) -> formats.Payload:
        self.count += 1
        t, h, battery = self._weather()
        n = self.count
        match self.kind:
            case Kind.BTHOME:
                payload = formats.bthome_v2(self.address, n, t, h, battery)
            case Kind.BTHOME_ENCRYPTED:
                key = self.key or DEMO_BIND_KEY
                payload = formats.bthome_v2(self.address, n, t, h, battery, key=key, counter=n)
            case Kind.RUUVI:
                payload = formats.ruuvi_rawv2(self.address, n, t, h, 1013.25 + t / 10, 2950)
            case Kind.PVVX:
                payload = formats.atc_pvvx(self.address, n, t, h, battery, 2950)
            case Kind.ATC1441:
                payload = formats.atc1441(self.address, n, t, h, battery, 2950)
            case Kind.GOVEE:
                payload = formats.govee_h5075(t, h, battery)
            case Kind.THERMOPRO:
                payload = formats.thermopro_tp357(t, round(h))
            case Kind.MIBEACON:
                payload = formats.mibeacon_lywsdcgq(self.address, n, t, h)
            case Kind.PVVX_ENCRYPTED | Kind.MIBEACON_ENCRYPTED:
                payload = self._encrypted(t, h, battery)
            case Kind.IBEACON:
                payload = formats.ibeacon(n)
            case Kind.GARBAGE | Kind.GATT:
                payload = self._garbage()
        if payload.values:
            self._record(payload.values)
        return payload

    def _encrypted(self, t: float, h: float, battery: int) -> formats.Payload:
        key = self.key or DEMO_BIND_KEY
        n = self.count
        if self.kind is Kind.PVVX_ENCRYPTED:
            return formats.atc_pvvx_encrypted(self.address, n, t, h, battery, key)
        # Humidity in whole percent: xiaomi-ble reads a LYWSD03MMC's so (the stock firmware's
        # resolution), so the gateway publishes what was sent.
        measurements = (("temperature", t), ("humidity", round(h)), ("battery", battery))
        name, value = measurements[n % 3]
        return formats.mibeacon_v5_encrypted(self.address, n, name, value, key)

    def _garbage(self) -> formats.Payload:
        if self.kind is Kind.GATT:
            return formats.Payload({}, {}, {})
        junk = self.rng.randbytes(self.rng.randrange(0, 31))
        choice = self.rng.randrange(4)
        if choice == 0:
            return formats.Payload({formats.BTHOME_UUID: junk}, {}, {})
        if choice == 1:
            return formats.Payload({formats.ATC_UUID: junk}, {}, {})
        company = (formats.RUUVI_COMPANY, formats.GOVEE_COMPANY)[choice - 2]
        return formats.Payload({}, {company: junk}, {})

    def _record(self, values: dict[str, float]) -> None:
        self.sent.append(values)
        del self.sent[:-2000]

    # GATT answers: each read is one measurement.
    def gatt_temperature(self) -> bytes:
        self.count += 1
        t = round(self._weather()[0] * 100)
        self._record({"temperature": t / 100})
        return struct.pack("<h", t)

    def gatt_humidity(self) -> bytes:
        h = round(self._weather()[1] * 100)
        self._record({"humidity": h / 100})
        return struct.pack("<H", h)

    def gatt_battery(self) -> bytes:
        battery = self._weather()[2]
        self._record({"battery": float(battery)})
        return bytes([battery])


def default_sensors() -> list[SimSensor]:
    """One sensor of every kind, on addresses that tell their kind by the last byte."""
    return [
        SimSensor(Kind.BTHOME, "A4:C1:38:00:00:01", "BTHome 0001", seed=1),
        SimSensor(Kind.BTHOME_ENCRYPTED, "A4:C1:38:00:00:02", "BTHome 0002", seed=2),
        SimSensor(Kind.RUUVI, "C4:7C:8D:00:00:03", "Ruuvi 0003", seed=3),
        SimSensor(Kind.PVVX, "A4:C1:38:00:00:04", "ATC_000004", seed=4),
        SimSensor(Kind.ATC1441, "A4:C1:38:00:00:05", "ATC_000005", seed=5),
        SimSensor(Kind.GOVEE, "A4:C1:38:00:00:06", "GVH5075_0006", seed=6),
        SimSensor(Kind.THERMOPRO, "B8:59:CE:00:00:07", "TP357 (0007)", seed=7),
        SimSensor(Kind.GARBAGE, "DE:AD:BE:EF:00:08", "junk 0008", every=0.5, seed=8),
        SimSensor(Kind.GATT, "F0:F0:00:00:00:09", "GATT thermo 0009", seed=9),
        SimSensor(Kind.MIBEACON, "4C:65:A8:00:00:0B", "MJ_HT_V1", seed=11),
    ]


def many_sensors(count: int, every: float = 1.0) -> list[SimSensor]:
    """``count`` BTHome sensors (for load): addresses 02:00:00:00:HH:LL, a locally
    administered range no real sensor has."""
    return [
        SimSensor(
            Kind.BTHOME,
            f"02:00:00:00:{n >> 8:02X}:{n & 0xFF:02X}",
            f"BTHome {n:04X}",
            every=every,
            seed=100 + n,
        )
        for n in range(count)
    ]


def _is_connected(device: Device) -> bool:
    return device.connected


def _device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.replace(':', '_')}"


class BluezSimulator:
    """The simulated ``org.bluez`` service on the bus at ``bus_address``. With ``monitors`` the
    adapter has BlueZ's advertisement monitor (passive scanning, :mod:`.monitor`); without, it
    is a BlueZ before 5.56 or without ``--experimental``."""

    def __init__(
        self,
        sensors: list[SimSensor],
        bus_address: str,
        adapter: str = "hci0",
        *,
        monitors: bool = True,
    ) -> None:
        self.sensors = {sensor.address: sensor for sensor in sensors}
        self._bus_address = bus_address
        self.adapter_path = f"/org/bluez/{adapter}"
        self.adapter = Adapter("00:1A:7D:DA:71:13")
        self.devices: dict[str, Device] = {}
        self.links = Links()
        self._characteristics: list[GattCharacteristic] = []
        self._bus: MessageBus | None = None
        self._task: asyncio.Task[None] | None = None
        self._with_monitors = monitors
        self.monitors: Monitors | None = None
        self.adverts = 0

    async def start(self) -> None:
        bus = await MessageBus(bus_address=self._bus_address, bus_type=BusType.SYSTEM).connect()
        self._bus = bus
        bus.export(self.adapter_path, self.adapter)
        if self._with_monitors:
            self.monitors = Monitors(bus, self.adapter_path)
            self.monitors.export()
        for sensor in self.sensors.values():
            self._export_sensor(bus, sensor)
        await bus.request_name("org.bluez")
        self._task = asyncio.create_task(self._advertise())

    def _export_sensor(self, bus: MessageBus, sensor: SimSensor) -> None:
        path = _device_path(self.adapter_path, sensor.address)
        device = Device(self.adapter_path, sensor.address, sensor.name, self.links)
        self.devices[sensor.address] = device
        bus.export(path, device)
        if sensor.kind is not Kind.GATT:
            return
        device.uuids = [formats.uuid16(0x181A), formats.uuid16(0x180F)]
        environmental = f"{path}/service000c"
        battery = f"{path}/service0020"
        bus.export(environmental, GattService(formats.uuid16(0x181A), path))
        bus.export(battery, GattService(formats.uuid16(0x180F), path))
        for char_path, uuid, service, flags, value in (
            (
                f"{environmental}/char000d",
                GATT_TEMPERATURE,
                environmental,
                ["read", "notify"],
                sensor.gatt_temperature,
            ),
            (
                f"{environmental}/char0010",
                GATT_HUMIDITY,
                environmental,
                ["read"],
                sensor.gatt_humidity,
            ),
            (f"{battery}/char0021", GATT_BATTERY, battery, ["read"], sensor.gatt_battery),
        ):
            characteristic = GattCharacteristic(uuid, service, flags, value)
            characteristic.connected = partial(_is_connected, device)
            self._characteristics.append(characteristic)
            bus.export(char_path, characteristic)

    async def stop(self) -> None:
        for device in self.devices.values():
            device.cancel_pending()
        await asyncio.sleep(0)  # let the hanging Connect calls answer
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.monitors is not None:
            await self.monitors.close()
        if self._bus is not None:
            self._bus.disconnect()
            # It ends with the error that closed the socket (our own disconnect).
            with contextlib.suppress(EOFError, OSError):
                await self._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    async def _advertise(self) -> None:
        loop = asyncio.get_running_loop()
        due = {address: loop.time() + i * 0.01 for i, address in enumerate(self.sensors)}
        notify_due = loop.time()
        while True:
            now = loop.time()
            for address, sensor in self.sensors.items():
                if due[address] > now:
                    continue
                due[address] = now + sensor.every
                if not sensor.silent:
                    self._advertise_once(sensor)
            if now >= notify_due:  # a notifying characteristic sends once a second
                notify_due = now + 1.0
                for characteristic in self._characteristics:
                    characteristic.notify()
            await asyncio.sleep(max(0.005, min([*due.values(), notify_due]) - loop.time()))

    def _advertise_once(self, sensor: SimSensor) -> None:
        """One advertisement, passed on as BlueZ does: to discovery sessions, and to the
        monitors (passive scanners) whose patterns it matches."""
        monitors = self.monitors.active if self.monitors is not None else []
        if not self.adapter.powered or not (self.adapter.discovering or monitors):
            return
        payload = sensor.payload() if sensor.kind is not Kind.GATT else None
        device = self.devices[sensor.address]
        service_data = payload.service_data if payload else {}
        manufacturer_data = payload.manufacturer_data if payload else {}
        matched: list[Monitor] = []
        if self.monitors is not None and monitors:
            structures = advertising_data(
                sensor.name, service_data, manufacturer_data, device.uuids
            )
            matched = self.monitors.matching(structures)
        if not (self.adapter.discovering or matched):
            return
        device.advertise(-55 - sensor.rng.randrange(30), manufacturer_data, service_data)
        self.adverts += 1
        if self.monitors is not None:
            self.monitors.report_found(matched, _device_path(self.adapter_path, sensor.address))

    # Faults.
    def vanish(self, address: str) -> None:
        """The sensor stops advertising (a flat battery, out of range)."""
        self.sensors[address].silent = True
        if self.monitors is not None:
            self.monitors.report_lost(_device_path(self.adapter_path, address))

    def reappear(self, address: str) -> None:
        self.sensors[address].silent = False

    def set_connect(self, address: str, behaviour: str) -> None:
        """Connect answers "ok", "fail" (an error at once) or "hang" (never, until cancelled)."""
        self.devices[address].connect_behaviour = behaviour

    def power(self, on: bool) -> None:
        self.adapter.set_powered(on)


class SimulatedBluetooth:
    """``with SimulatedBluetooth(sensors) as bt:`` a private system bus at ``bt.address`` with
    the simulated BlueZ on it, run on a thread of its own so a test can drive faults
    (``bt.call(bt.simulator.vanish, address)``) while a gateway process listens. With
    ``bluez=False`` the bus has no BlueZ on it at all; with ``monitors=False`` its adapter has
    no advertisement monitor (passive scanning is refused)."""

    def __init__(
        self,
        sensors: list[SimSensor] | None = None,
        adapter: str = "hci0",
        *,
        bluez: bool = True,
        monitors: bool = True,
    ) -> None:
        self._bus = PrivateBus()
        self._sensors = default_sensors() if sensors is None else sensors
        self._adapter = adapter
        self._bluez = bluez
        self._monitors = monitors
        self._loop_thread: _LoopThread | None = None
        self.simulator: BluezSimulator | None = None

    @property
    def address(self) -> str:
        return self._bus.address

    def sensor(self, address: str) -> SimSensor:
        assert self.simulator is not None
        return self.simulator.sensors[address]

    def __enter__(self) -> Self:
        self._bus.start()
        self._loop_thread = _LoopThread("simulated-bluez")
        if self._bluez:
            self.start_bluez()
        return self

    def start_bluez(self) -> None:
        """Start BlueZ on the bus (for a test that begins with none)."""
        self.simulator = BluezSimulator(
            self._sensors, self._bus.address, self._adapter, monitors=self._monitors
        )
        self.run(self.simulator.start())

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float = 10.0) -> _T:
        assert self._loop_thread is not None
        return self._loop_thread.run(coroutine, timeout)

    def call(self, function: Callable[..., _T], *args: Any) -> _T:
        """``function(*args)`` on the simulator's thread (D-Bus objects are not thread-safe)."""

        async def call() -> _T:
            return function(*args)

        return self.run(call())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.simulator is not None:
                self.run(self.simulator.stop())
        finally:
            if self._loop_thread is not None:
                self._loop_thread.close()
            self._bus.stop()
