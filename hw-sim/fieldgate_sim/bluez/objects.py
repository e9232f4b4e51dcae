"""BlueZ's D-Bus objects as bleak uses them (``org.bluez.Adapter1``, ``Device1``,
``GattService1``, ``GattCharacteristic1``), exported with dbus-fast's service API. The
ObjectManager (``GetManagedObjects``, ``InterfacesAdded``/``Removed``) is dbus-fast's own.

Only what bleak calls is here; the behaviour behind it (advertising, faults) is the
simulator's, which sets the state and emits the changes."""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures from the
# annotations at class creation.

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from dbus_fast import DBusError, Variant
from dbus_fast.annotations import (
    DBusBool,
    DBusBytes,
    DBusDict,
    DBusInt16,
    DBusObjectPath,
    DBusSignature,
    DBusStr,
)
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

DBusStrings = Annotated[list[str], DBusSignature("as")]
DBusManufacturerData = Annotated[dict[int, Variant], DBusSignature("a{qv}")]

NOT_READY = "org.bluez.Error.NotReady"
FAILED = "org.bluez.Error.Failed"
NOT_CONNECTED = "org.bluez.Error.NotConnected"


class Adapter(ServiceInterface):
    """``org.bluez.Adapter1``: discovery is refused while the adapter is powered off. As in
    BlueZ, each StartDiscovery is a session of its own: the adapter discovers while any is open
    (a one-shot scan stopping must not end a gateway's long-running scan)."""

    def __init__(self, address: str) -> None:
        super().__init__("org.bluez.Adapter1")
        self.address = address
        self.powered = True
        self.discovering = False
        self.sessions = 0
        #: Called when discovery starts or stops (the simulator advertises only meanwhile).
        self.on_discovery: Callable[[bool], None] = lambda _on: None

    def set_powered(self, powered: bool) -> None:
        changed: dict[str, Any] = {"Powered": powered}
        self.powered = powered
        if not powered:
            self.sessions = 0
        if not powered and self.discovering:
            self.discovering = False
            changed["Discovering"] = False
            self.on_discovery(False)
        self.emit_properties_changed(changed)

    @dbus_method(name="StartDiscovery")
    def start_discovery(self) -> None:
        if not self.powered:
            raise DBusError(NOT_READY, "Resource Not Ready")
        self.sessions += 1
        if not self.discovering:
            self.discovering = True
            self.emit_properties_changed({"Discovering": True})
            self.on_discovery(True)

    @dbus_method(name="StopDiscovery")
    def stop_discovery(self) -> None:
        if not self.powered:
            raise DBusError(NOT_READY, "Resource Not Ready")
        self.sessions = max(0, self.sessions - 1)
        if self.discovering and self.sessions == 0:
            self.discovering = False
            self.emit_properties_changed({"Discovering": False})
            self.on_discovery(False)

    @dbus_method(name="SetDiscoveryFilter")
    def set_discovery_filter(self, filters: DBusDict) -> None:
        if not self.powered:
            raise DBusError(NOT_READY, "Resource Not Ready")

    @dbus_method(name="GetDiscoveryFilters")
    def get_discovery_filters(self) -> DBusStrings:
        return ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable"]

    @dbus_method(name="RemoveDevice")
    def remove_device(self, device: DBusObjectPath) -> None:
        return None

    @dbus_property(access=PropertyAccess.READ, name="Address")
    def address_property(self) -> DBusStr:
        return self.address

    @dbus_property(access=PropertyAccess.READ, name="Name")
    def name_property(self) -> DBusStr:
        return "fieldgate-sim"

    @dbus_property(access=PropertyAccess.READ, name="Alias")
    def alias_property(self) -> DBusStr:
        return "fieldgate-sim"

    @dbus_property(access=PropertyAccess.READ, name="Powered")
    def powered_property(self) -> DBusBool:
        return self.powered

    @dbus_property(access=PropertyAccess.READ, name="Discovering")
    def discovering_property(self) -> DBusBool:
        return self.discovering

    @dbus_property(access=PropertyAccess.READ, name="Roles")
    def roles_property(self) -> DBusStrings:
        return ["central", "peripheral"]


class Links:
    """Connections of all devices to the adapter, pending or made: how many now, and the most
    at once (a controller has only a few slots)."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def opened(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def closed(self) -> None:
        self.now -= 1


#: Connect's behaviour: "ok", "fail" (an error at once) or "hang" (no answer until cancelled
#: by Disconnect, as a device out of range leaves BlueZ's connect pending).
ConnectBehaviour = str


class Device(ServiceInterface):
    """``org.bluez.Device1``: properties the simulator changes to advertise, and Connect."""

    def __init__(self, adapter_path: str, address: str, name: str, links: Links) -> None:
        super().__init__("org.bluez.Device1")
        self.links = links
        self.adapter_path = adapter_path
        self.address = address
        # Not `name`: that is the interface's name in dbus-fast.
        self.local_name = name
        self.rssi = -60
        self.manufacturer_data: dict[int, Variant] = {}
        self.service_data: dict[str, Variant] = {}
        self.uuids: list[str] = []
        self.connected = False
        self.services_resolved = False
        self.connect_behaviour: ConnectBehaviour = "ok"
        self.connects = 0
        #: Advertisements passed on to D-Bus clients (changes of its properties emitted).
        self.adverts = 0
        self._cancel_connect = asyncio.Event()

    def advertise(
        self, rssi: int, manufacturer_data: dict[int, bytes], service_data: dict[str, bytes]
    ) -> None:
        """One advertisement: what BlueZ emits when it hears one (bleak sees changes only)."""
        self.adverts += 1
        self.rssi = rssi
        changed: dict[str, Any] = {"RSSI": rssi}
        if manufacturer_data:
            self.manufacturer_data = {k: Variant("ay", v) for k, v in manufacturer_data.items()}
            changed["ManufacturerData"] = self.manufacturer_data
        if service_data:
            self.service_data = {k: Variant("ay", v) for k, v in service_data.items()}
            changed["ServiceData"] = self.service_data
        self.emit_properties_changed(changed)

    def cancel_pending(self) -> None:
        """End a Connect left hanging (the simulator is stopping)."""
        self._cancel_connect.set()

    @dbus_method(name="Connect")
    async def connect(self) -> None:
        self.connects += 1
        if self.connect_behaviour == "fail":
            raise DBusError(FAILED, "le-connection-abort-by-remote")
        self.links.opened()
        if self.connect_behaviour == "hang":
            self._cancel_connect.clear()
            try:
                await self._cancel_connect.wait()
            finally:
                self.links.closed()
            raise DBusError(FAILED, "Operation canceled")
        self.connected = True
        self.emit_properties_changed({"Connected": True})
        self.services_resolved = True
        self.emit_properties_changed({"ServicesResolved": True})

    @dbus_method(name="Disconnect")
    def disconnect(self) -> None:
        self._cancel_connect.set()
        if self.connected:
            self.connected = False
            self.services_resolved = False
            self.emit_properties_changed({"ServicesResolved": False, "Connected": False})
            self.links.closed()

    @dbus_property(access=PropertyAccess.READ, name="Address")
    def address_property(self) -> DBusStr:
        return self.address

    @dbus_property(access=PropertyAccess.READ, name="AddressType")
    def address_type_property(self) -> DBusStr:
        return "public"

    @dbus_property(access=PropertyAccess.READ, name="Name")
    def name_property(self) -> DBusStr:
        return self.local_name

    @dbus_property(access=PropertyAccess.READ, name="Alias")
    def alias_property(self) -> DBusStr:
        return self.local_name

    @dbus_property(access=PropertyAccess.READ, name="Adapter")
    def adapter_property(self) -> DBusObjectPath:
        return self.adapter_path

    @dbus_property(access=PropertyAccess.READ, name="Paired")
    def paired_property(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ, name="Bonded")
    def bonded_property(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ, name="Trusted")
    def trusted_property(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ, name="Blocked")
    def blocked_property(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ, name="Connected")
    def connected_property(self) -> DBusBool:
        return self.connected

    @dbus_property(access=PropertyAccess.READ, name="ServicesResolved")
    def services_resolved_property(self) -> DBusBool:
        return self.services_resolved

    @dbus_property(access=PropertyAccess.READ, name="UUIDs")
    def uuids_property(self) -> DBusStrings:
        return self.uuids

    @dbus_property(access=PropertyAccess.READ, name="RSSI")
    def rssi_property(self) -> DBusInt16:
        return self.rssi

    @dbus_property(access=PropertyAccess.READ, name="ManufacturerData")
    def manufacturer_data_property(self) -> DBusManufacturerData:
        return self.manufacturer_data

    @dbus_property(access=PropertyAccess.READ, name="ServiceData")
    def service_data_property(self) -> DBusDict:
        return self.service_data


class GattService(ServiceInterface):
    """``org.bluez.GattService1``."""

    def __init__(self, uuid: str, device_path: str) -> None:
        super().__init__("org.bluez.GattService1")
        self.uuid = uuid
        self.device_path = device_path

    @dbus_property(access=PropertyAccess.READ, name="UUID")
    def uuid_property(self) -> DBusStr:
        return self.uuid

    @dbus_property(access=PropertyAccess.READ, name="Device")
    def device_property(self) -> DBusObjectPath:
        return self.device_path

    @dbus_property(access=PropertyAccess.READ, name="Primary")
    def primary_property(self) -> DBusBool:
        return True


class GattCharacteristic(ServiceInterface):
    """``org.bluez.GattCharacteristic1``: ReadValue answers ``value()``; while notifying, the
    simulator's :meth:`notify` emits the value as a change of ``Value``, as BlueZ does."""

    def __init__(
        self, uuid: str, service_path: str, flags: list[str], value: Callable[[], bytes]
    ) -> None:
        super().__init__("org.bluez.GattCharacteristic1")
        self.uuid = uuid
        self.service_path = service_path
        self.flags = flags
        self.value = value
        self.current = b""
        self.notifying = False
        #: Whether the device is connected now (reads and subscriptions need it).
        self.connected: Callable[[], bool] = lambda: True

    def notify(self) -> None:
        if self.notifying:
            self.current = self.value()
            self.emit_properties_changed({"Value": self.current})

    @dbus_method(name="ReadValue")
    def read_value(self, options: DBusDict) -> DBusBytes:
        if not self.connected():
            raise DBusError(NOT_CONNECTED, "Not Connected")
        self.current = self.value()
        return self.current

    @dbus_method(name="WriteValue")
    def write_value(self, value: DBusBytes, options: DBusDict) -> None:
        raise DBusError("org.bluez.Error.NotPermitted", "Write not permitted")

    @dbus_method(name="StartNotify")
    def start_notify(self) -> None:
        if not self.connected():
            raise DBusError(NOT_CONNECTED, "Not Connected")
        if not self.notifying:
            self.notifying = True
            self.emit_properties_changed({"Notifying": True})

    @dbus_method(name="StopNotify")
    def stop_notify(self) -> None:
        if self.notifying:
            self.notifying = False
            self.emit_properties_changed({"Notifying": False})

    @dbus_property(access=PropertyAccess.READ, name="UUID")
    def uuid_property(self) -> DBusStr:
        return self.uuid

    @dbus_property(access=PropertyAccess.READ, name="Service")
    def service_property(self) -> DBusObjectPath:
        return self.service_path

    @dbus_property(access=PropertyAccess.READ, name="Value")
    def value_property(self) -> DBusBytes:
        return self.current

    @dbus_property(access=PropertyAccess.READ, name="Notifying")
    def notifying_property(self) -> DBusBool:
        return self.notifying

    @dbus_property(access=PropertyAccess.READ, name="Flags")
    def flags_property(self) -> DBusStrings:
        return self.flags
