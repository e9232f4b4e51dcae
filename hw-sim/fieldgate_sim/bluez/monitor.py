"""BlueZ's advertisement monitor (``org.bluez.AdvertisementMonitorManager1`` on the adapter,
``org.bluez.AdvertisementMonitor1`` objects of the client), which is what passive scanning is
on Linux: a client registers the root of a hierarchy of monitor objects, BlueZ reads each
monitor's ``Type`` and ``Patterns``, calls ``Activate`` on it, and from then on passes on the
advertisements that match one of its or-patterns (``DeviceFound`` once per device, then the
device's property changes), whether or not anyone discovers. What matches no monitor is not
passed on at all.

As in BlueZ's ``src/adv_monitor.c`` (documented in ``org.bluez.AdvertisementMonitorManager(5)``
and ``org.bluez.AdvertisementMonitor(5)``): RegisterMonitor is answered once the client's
objects under the root were read; monitors appear and go with the client's InterfacesAdded /
InterfacesRemoved under the root; a monitor of an unknown type or with invalid patterns gets
``Release``; UnregisterMonitor releases the monitors; a client that leaves the bus loses its
registrations. A pattern matches an advertisement when one of its AD structures has the
pattern's AD type and holds the pattern's bytes at the pattern's start position (BlueZ's
``bt_ad_pattern_match``).
"""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from the
# annotations at class creation.

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from fieldgate_sim.bluez.objects import FAILED, DBusStrings

log = logging.getLogger(__name__)

MANAGER_INTERFACE = "org.bluez.AdvertisementMonitorManager1"
MONITOR_INTERFACE = "org.bluez.AdvertisementMonitor1"
_OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
_INVALID_ARGUMENTS = "org.bluez.Error.InvalidArguments"
_ALREADY_EXISTS = "org.bluez.Error.AlreadyExists"
_DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"

#: A legacy advertisement carries at most 31 bytes of AD structures (Core Spec Vol 3 Part C 11).
MAX_AD_LENGTH = 31
AD_FLAGS = 0x01
AD_UUID16_COMPLETE = 0x03
AD_COMPLETE_LOCAL_NAME = 0x09
AD_SERVICE_DATA_UUID16 = 0x16
AD_SERVICE_DATA_UUID128 = 0x21
AD_MANUFACTURER_DATA = 0xFF
#: The highest AD type BlueZ accepts in a pattern besides manufacturer data (3D information).
_AD_LAST_TYPE = 0x3D
#: LE General Discoverable, BR/EDR not supported: what battery sensors advertise.
_FLAGS = b"\x06"
_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"

#: One AD structure: its type and its data (without the length and type bytes).
AdStructure = tuple[int, bytes]


@dataclass(frozen=True, slots=True)
class Pattern:
    """One or-pattern: ``content`` at ``start`` in the data of an AD structure of ``ad_type``."""

    start: int
    ad_type: int
    content: bytes

    def matches(self, structures: Iterable[AdStructure]) -> bool:
        end = self.start + len(self.content)
        return any(
            ad_type == self.ad_type and data[self.start : end] == self.content
            for ad_type, data in structures
            if end <= len(data)
        )


def parse_patterns(value: object) -> list[Pattern] | None:
    """The monitor's ``Patterns`` (``a(yyay)``), or None if BlueZ would refuse them: none at
    all, an AD type that is not one, an empty pattern or one that reaches past 31 bytes."""
    if not isinstance(value, list) or not value:
        return None
    patterns = [_parse_pattern(entry) for entry in value]
    return [p for p in patterns if p is not None] if None not in patterns else None


def _parse_pattern(entry: object) -> Pattern | None:
    match entry:
        case [int(start), int(ad_type), bytes(content)] if content:
            pass
        case _:
            return None
    if not (AD_FLAGS <= ad_type <= _AD_LAST_TYPE or ad_type == AD_MANUFACTURER_DATA):
        return None
    if start + len(content) > MAX_AD_LENGTH:
        return None
    return Pattern(start, ad_type, content)


def _uuid_bytes(uuid: str) -> AdStructure:
    """Service data's AD type and UUID bytes: 16-bit for UUIDs of the Bluetooth base, else 128
    (both little-endian on the air)."""
    uuid = uuid.lower()
    if uuid.startswith("0000") and uuid.endswith(_BASE_UUID_TAIL):
        return AD_SERVICE_DATA_UUID16, bytes.fromhex(uuid[4:8])[::-1]
    return AD_SERVICE_DATA_UUID128, bytes.fromhex(uuid.replace("-", ""))[::-1]


def advertising_data(
    name: str,
    service_data: dict[str, bytes],
    manufacturer_data: dict[int, bytes],
    service_uuids: Iterable[str] = (),
) -> list[AdStructure]:
    """The AD structures of one advertisement as a sensor sends it: flags, the 16-bit service
    UUIDs, service data, manufacturer data, and the complete local name if it still fits in the
    31 bytes (a sensor puts it in the scan response otherwise, which a passive scan never asks
    for)."""
    structures: list[AdStructure] = [(AD_FLAGS, _FLAGS)]
    short = [
        bytes.fromhex(u[4:8])[::-1]
        for u in service_uuids
        if u.lower().startswith("0000") and u.lower().endswith(_BASE_UUID_TAIL)
    ]
    if short:
        structures.append((AD_UUID16_COMPLETE, b"".join(short)))
    for uuid, data in service_data.items():
        ad_type, uuid_bytes = _uuid_bytes(uuid)
        structures.append((ad_type, uuid_bytes + data))
    for company, data in manufacturer_data.items():
        structures.append((AD_MANUFACTURER_DATA, company.to_bytes(2, "little") + data))
    used = sum(2 + len(data) for _, data in structures)
    encoded = name.encode()
    if name and used + 2 + len(encoded) <= MAX_AD_LENGTH:
        structures.append((AD_COMPLETE_LOCAL_NAME, encoded))
    return structures


@dataclass(slots=True)
class Monitor:
    """An activated monitor of a client: where it is, its patterns, the devices it was told of."""

    owner: str
    path: str
    patterns: list[Pattern]
    found: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _App:
    owner: str
    root: str
    monitors: dict[str, Monitor] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)

    def holds(self, path: str) -> bool:
        return self.root in {"/", path} or path.startswith(self.root + "/")


class MonitorManager(ServiceInterface):
    """``org.bluez.AdvertisementMonitorManager1`` on the adapter. Its methods need the caller's
    bus name, which dbus-fast does not hand to a service method: :class:`Monitors` answers them
    from a message handler that runs before dbus-fast's dispatch; they are declared here so
    that introspection shows the interface as BlueZ has it."""

    def __init__(self) -> None:
        super().__init__(MANAGER_INTERFACE)

    @dbus_method(name="RegisterMonitor")
    def register_monitor(self, application: DBusObjectPath) -> None:
        raise NotImplementedError("answered by Monitors.handle")

    @dbus_method(name="UnregisterMonitor")
    def unregister_monitor(self, application: DBusObjectPath) -> None:
        raise NotImplementedError("answered by Monitors.handle")

    @dbus_property(access=PropertyAccess.READ, name="SupportedMonitorTypes")
    def supported_monitor_types(self) -> DBusStrings:
        return ["or_patterns"]

    @dbus_property(access=PropertyAccess.READ, name="SupportedFeatures")
    def supported_features(self) -> DBusStrings:
        # A controller that filters by patterns itself; the simulated one does it here.
        return ["controller-patterns"]


class Monitors:
    """The registered monitors of one adapter and the D-Bus conversation with their clients.
    It owns the tasks that talk to clients; :meth:`close` cancels and awaits them."""

    def __init__(self, bus: MessageBus, adapter_path: str) -> None:
        self._bus = bus
        self._adapter_path = adapter_path
        self._apps: dict[tuple[str, str], _App] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def export(self) -> None:
        self._bus.export(self._adapter_path, MonitorManager())
        self._bus.add_message_handler(self.handle)

    @property
    def active(self) -> list[Monitor]:
        return [m for app in self._apps.values() for m in app.monitors.values()]

    def matching(self, structures: list[AdStructure]) -> list[Monitor]:
        """The active monitors one of whose patterns matches the advertisement."""
        return [m for m in self.active if any(p.matches(structures) for p in m.patterns)]

    def report_found(self, monitors: list[Monitor], device_path: str) -> None:
        """DeviceFound to each monitor that was not yet told of the device."""
        for monitor in monitors:
            if device_path not in monitor.found:
                monitor.found.add(device_path)
                self._call(monitor, "DeviceFound", device_path)

    def report_lost(self, device_path: str) -> None:
        """DeviceLost to each monitor that found the device (it went out of range)."""
        for monitor in self.active:
            if device_path in monitor.found:
                monitor.found.discard(device_path)
                self._call(monitor, "DeviceLost", device_path)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # The D-Bus side.
    def handle(self, message: Message) -> bool:
        """dbus-fast's message handler: True for the calls it answered."""
        if message.message_type is MessageType.SIGNAL:
            self._signal(message)
            return False
        if (
            message.message_type is not MessageType.METHOD_CALL
            or message.path != self._adapter_path
            or message.interface != MANAGER_INTERFACE
        ):
            return False
        if message.member not in {"RegisterMonitor", "UnregisterMonitor"}:
            return False
        if message.signature != "o" or not str(message.body[0]).startswith("/"):
            self._bus.send(Message.new_error(message, _INVALID_ARGUMENTS, "Invalid arguments"))
        elif message.member == "RegisterMonitor":
            self._register(message)
        else:
            self._unregister(message)
        return True

    def _register(self, message: Message) -> None:
        key = (message.sender or "", str(message.body[0]))
        if key in self._apps:
            self._bus.send(Message.new_error(message, _ALREADY_EXISTS, "Already Exists"))
            return
        app = self._apps[key] = _App(*key)
        self._spawn(self._start(app, message))

    def _unregister(self, message: Message) -> None:
        app = self._apps.pop((message.sender or "", str(message.body[0])), None)
        if app is None:
            self._bus.send(Message.new_error(message, _DOES_NOT_EXIST, "Does Not Exist"))
            return
        for monitor in app.monitors.values():
            self._call(monitor, "Release")
        self._spawn(self._drop_rules(app))
        self._bus.send(Message.new_method_return(message))

    async def _start(self, app: _App, registration: Message) -> None:
        """Watch the client's objects under its root, read those there now, then answer."""
        app.rules = [
            f"type='signal',sender='{app.owner}',interface='{_OBJECT_MANAGER}',"
            f"path_namespace='{app.root}'",
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{app.owner}'",
        ]
        for rule in app.rules:
            await self._bus_call("AddMatch", rule)
        reply = await self._bus.call(
            Message(
                destination=app.owner,
                path=app.root,
                interface=_OBJECT_MANAGER,
                member="GetManagedObjects",
            )
        )
        if reply is not None and reply.message_type is MessageType.METHOD_RETURN:
            for path, interfaces in reply.body[0].items():
                self._added(app, path, interfaces)
        if (app.owner, app.root) not in self._apps:
            self._bus.send(Message.new_error(registration, FAILED, "Adv Monitor app destroyed"))
            return
        self._bus.send(Message.new_method_return(registration))

    def _signal(self, message: Message) -> None:
        if message.member == "NameOwnerChanged" and message.sender == "org.freedesktop.DBus":
            name, _old, new = message.body
            if not new:  # the client left the bus: its registrations go with it
                for key in [k for k in self._apps if k[0] == name]:
                    self._spawn(self._drop_rules(self._apps.pop(key)))
            return
        if message.interface != _OBJECT_MANAGER:
            return
        for app in self._apps.values():
            if app.owner != message.sender:
                continue
            path = str(message.body[0])
            if message.member == "InterfacesAdded":
                self._added(app, path, message.body[1])
            elif message.member == "InterfacesRemoved" and MONITOR_INTERFACE in message.body[1]:
                # The object is gone: no Release, as BlueZ does.
                app.monitors.pop(path, None)

    def _added(self, app: _App, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        properties = interfaces.get(MONITOR_INTERFACE)
        if properties is None or not app.holds(path) or path in app.monitors:
            return
        monitor_type = properties.get("Type")
        patterns = properties.get("Patterns")
        parsed = parse_patterns(patterns.value if patterns is not None else None)
        monitor = Monitor(app.owner, path, parsed or [])
        if monitor_type is None or monitor_type.value != "or_patterns" or parsed is None:
            log.info("monitor %s of %s released: invalid Type or Patterns", path, app.owner)
            self._call(monitor, "Release")
            return
        app.monitors[path] = monitor
        self._call(monitor, "Activate")

    def _call(self, monitor: Monitor, member: str, device_path: str | None = None) -> None:
        """A [noreply] call on the client's monitor, as BlueZ makes them."""
        self._bus.send(
            Message(
                destination=monitor.owner,
                path=monitor.path,
                interface=MONITOR_INTERFACE,
                member=member,
                signature="o" if device_path else "",
                body=[device_path] if device_path else [],
                flags=MessageFlag.NO_REPLY_EXPECTED,
            )
        )

    async def _drop_rules(self, app: _App) -> None:
        for rule in app.rules:
            await self._bus_call("RemoveMatch", rule)

    async def _bus_call(self, member: str, rule: str) -> None:
        with contextlib.suppress(EOFError, OSError):
            await self._bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member=member,
                    signature="s",
                    body=[rule],
                )
            )

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
