"""Passive scanning through BlueZ's advertisement monitor: bleak's real BlueZ backend registers
the driver's or-patterns with the simulated BlueZ, which passes on only the advertisements that
match one of them. Unit cases for the matching (as BlueZ's ``bt_ad_pattern_match`` does it),
then bleak in this process, then a gateway end to end."""

# No `from __future__ import annotations`: dbus-fast reads the D-Bus signatures of the client's
# monitor below from its annotations at class creation.

import asyncio
import textwrap
from pathlib import Path
from typing import Annotated, Any

import pytest
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from dbus_fast import DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property
from fieldgate_sim.bluez import formats
from fieldgate_sim.bluez.monitor import (
    AD_COMPLETE_LOCAL_NAME,
    AD_MANUFACTURER_DATA,
    AD_SERVICE_DATA_UUID16,
    Pattern,
    advertising_data,
    parse_patterns,
)
from fieldgate_sim.bluez.simulator import Kind, SimSensor, SimulatedBluetooth
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.mosquitto import MosquittoBroker

from drivers.ble.config import BleDevice
from drivers.ble.driver import PASSIVE_PATTERNS, ConnectionBudget
from drivers.ble.gatt import GattDevice
from gateway.config.handover import settings_of
from gateway.errors import DeviceUnreachable
from tests.harness import GatewayProcess, gateway_yaml, start_gateway, wait_until
from tests.manual_clock import ManualClock
from tests.test_ble_end_to_end import (
    PLAIN,
    PVVX,
    RUUVI,
    THERMOPRO,
    assert_sent,
    ble_bus,
    has_readings,
    readings_of,
)

BEACON = "AC:23:3F:00:00:0D"
GATT = "F0:F0:00:00:00:09"


def patterns() -> list[Pattern]:
    parsed = parse_patterns([list(p) for p in PASSIVE_PATTERNS])
    assert parsed is not None
    return parsed


def test_the_drivers_patterns_match_the_formats_they_name_and_not_a_beacon():
    pvvx = formats.atc_pvvx(PVVX, 1, 4.5, 60.0, 90, 2950)
    ruuvi = formats.ruuvi_rawv2(RUUVI, 1, 4.5, 60.0, 1013.0, 2950)
    bthome = formats.bthome_v2(PLAIN, 1, 4.5, 60.0, 90)
    for payload in (pvvx, ruuvi, bthome):
        structures = advertising_data("x", payload.service_data, payload.manufacturer_data)
        assert any(p.matches(structures) for p in patterns()), payload
    beacon = formats.ibeacon(1)
    structures = advertising_data("beacon", beacon.service_data, beacon.manufacturer_data)
    assert not any(p.matches(structures) for p in patterns())


def test_a_pattern_matches_at_its_start_position_within_one_structure_of_its_type():
    structures = advertising_data("TP357 (0007)", {}, {0xC2: b"\x01\x02\x03"})
    assert (AD_MANUFACTURER_DATA, b"\xc2\x00\x01\x02\x03") in structures
    assert Pattern(2, AD_MANUFACTURER_DATA, b"\x01\x02").matches(structures)
    assert not Pattern(3, AD_MANUFACTURER_DATA, b"\x01\x02").matches(structures)
    assert not Pattern(4, AD_MANUFACTURER_DATA, b"\x03\x04").matches(structures), "past the end"
    assert not Pattern(0, AD_SERVICE_DATA_UUID16, b"\xc2\x00").matches(structures), "wrong type"
    assert Pattern(0, AD_COMPLETE_LOCAL_NAME, b"TP3").matches(structures)


def test_a_name_that_does_not_fit_beside_the_data_is_not_in_the_advertisement():
    payload = formats.bthome_v2(PLAIN, 1, 4.5, 60.0, 90, key=bytes(16), counter=1)
    structures = advertising_data("a name far too long", payload.service_data, {})
    assert sum(2 + len(data) for _, data in structures) <= 31
    assert all(ad_type != AD_COMPLETE_LOCAL_NAME for ad_type, _ in structures)


@pytest.mark.parametrize(
    "value",
    [
        [],  # at least one pattern
        [(0, 0x00, b"\x01")],  # AD type 0 is none
        [(0, 0x50, b"\x01")],  # beyond the assigned types, and not manufacturer data
        [(0, 0xFF, b"")],  # empty content
        [(30, 0xFF, b"\x01\x02")],  # reaches past 31 bytes
        "or_patterns",
    ],
)
def test_patterns_bluez_refuses_are_refused(value: object):
    assert parse_patterns(value) is None


async def test_a_passive_scan_hears_the_matching_sensors_and_never_the_others(
    monkeypatch: pytest.MonkeyPatch,
):
    sensors = [
        SimSensor(Kind.BTHOME, PLAIN, "BTHome 0001", every=0.2, seed=1),
        SimSensor(Kind.RUUVI, RUUVI, "Ruuvi 0003", every=0.2, seed=3),
        SimSensor(Kind.PVVX, PVVX, "ATC_000004", every=0.2, seed=4),
        SimSensor(Kind.THERMOPRO, THERMOPRO, "TP357 (0007)", every=0.2, seed=7),
        SimSensor(Kind.IBEACON, BEACON, "beacon 000D", every=0.2, seed=13),
        SimSensor(Kind.GATT, GATT, "GATT thermo 0009", every=0.2, seed=9),
    ]
    wanted = {PLAIN, RUUVI, PVVX, THERMOPRO}
    heard: dict[str, int] = {}

    def on_advert(device: BLEDevice, _data: AdvertisementData) -> None:
        heard[device.address] = heard.get(device.address, 0) + 1

    with SimulatedBluetooth(sensors) as bt:
        assert bt.simulator is not None
        simulator = bt.simulator
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bt.address)
        scanner = BleakScanner(
            on_advert,
            scanning_mode="passive",
            bluez={"adapter": "hci0", "or_patterns": PASSIVE_PATTERNS},
        )
        async with scanner:
            for _ in range(200):  # bounded: at most 10 s
                if all(heard.get(a, 0) >= 3 for a in wanted):
                    break
                await asyncio.sleep(0.05)
            monitors = bt.call(lambda: len(simulator.monitors.active if simulator.monitors else []))
            beacon_sent = bt.call(lambda: simulator.sensors[BEACON].count)
        assert all(heard.get(a, 0) >= 3 for a in wanted), heard
        assert monitors == 1
        assert not bt.call(lambda: simulator.adapter.discovering), "passive: no discovery"
        assert BEACON not in heard
        assert GATT not in heard
        assert beacon_sent > 0, "the beacon advertised all along"
        assert bt.call(lambda: simulator.devices[BEACON].adverts) == 0
        # Stopping unregisters the monitor: nothing is passed on any more.
        assert wait_until(
            lambda: bt.call(lambda: not (simulator.monitors and simulator.monitors.active)), 5
        )


def test_a_gateway_scanning_passively_publishes_the_sensors_values_and_hears_no_beacon(
    broker: MosquittoBroker, fleet: FleetSubscriber, gateways: list[GatewayProcess], tmp_path: Path
):
    sensors = [
        SimSensor(Kind.BTHOME, PLAIN, "BTHome 0001", seed=1),
        SimSensor(Kind.RUUVI, RUUVI, "Ruuvi 0003", seed=3),
        SimSensor(Kind.PVVX, PVVX, "ATC_000004", seed=4),
        SimSensor(Kind.IBEACON, BEACON, "beacon 000D", seed=13),
    ]
    with SimulatedBluetooth(sensors) as bt:
        config = gateway_yaml(
            broker.port,
            tmp_path / "buffer.db",
            buses=ble_bus(scanning="passive"),
            devices=textwrap.dedent(f"""\
            - {{name: plain, bus: radio, address: "{PLAIN}", interval: 1s}}
            - {{name: ruuvi, bus: radio, address: "{RUUVI}", interval: 1s, format: ruuvi}}
            - {{name: pvvx, bus: radio, address: "{PVVX}", interval: 1s}}
            - {{name: beacon, bus: radio, address: "{BEACON}", interval: 1s, stale_after: 2s}}
            """),
        )
        gateway = start_gateway(gateways, tmp_path, config, {"DBUS_SYSTEM_BUS_ADDRESS": bt.address})
        assert fleet.wait_for(has_readings({"plain": 2, "ruuvi": 2, "pvvx": 2}), timeout=40), (
            gateway.log()
        )
        assert gateway.wait_for_log("device beacon failed", timeout=20), gateway.log()
        for device, address in (("plain", PLAIN), ("ruuvi", RUUVI), ("pvvx", PVVX)):
            for reading in readings_of(fleet, device):
                assert_sent(bt, address, fleet, reading)
        assert bt.simulator is not None
        simulator = bt.simulator
        assert not bt.call(lambda: simulator.adapter.discovering), "passive: no discovery"
        assert bt.call(lambda: simulator.sensors[BEACON].count) > 0
        assert bt.call(lambda: simulator.devices[BEACON].adverts) == 0
        assert gateway.stop() == 0
    log = gateway.log()
    assert f"{BEACON} not heard since the scan started" in log, log
    assert not readings_of(fleet, "beacon")
    assert "passive scanning is not supported" not in log
    assert "Traceback" not in log, log


class _Monitor(ServiceInterface):
    """A client's ``org.bluez.AdvertisementMonitor1``, recording what BlueZ calls on it."""

    def __init__(self, patterns: list[tuple[int, int, bytes]]) -> None:
        super().__init__("org.bluez.AdvertisementMonitor1")
        self.patterns = patterns
        self.calls: list[str] = []

    @dbus_method(name="Activate")
    def activate(self) -> None:
        self.calls.append("Activate")

    @dbus_method(name="Release")
    def release(self) -> None:
        self.calls.append("Release")

    @dbus_method(name="DeviceFound")
    def device_found(self, device: DBusObjectPath) -> None:
        self.calls.append(f"DeviceFound {device}")

    @dbus_method(name="DeviceLost")
    def device_lost(self, device: DBusObjectPath) -> None:
        self.calls.append(f"DeviceLost {device}")

    @dbus_property(access=PropertyAccess.READ, name="Type")
    def type_property(self) -> DBusStr:
        return "or_patterns"

    @dbus_property(access=PropertyAccess.READ, name="Patterns")
    def patterns_property(self) -> Annotated[list[Any], DBusSignature("a(yyay)")]:
        return [list(p) for p in self.patterns]


async def test_the_monitor_api_behaves_as_bluez_documents_it_for_any_client():
    """An application as bluetoothctl's: an ObjectManager at its root, monitors below it,
    exported before RegisterMonitor (bleak exports after; both are BlueZ's to accept)."""
    bthome = (0, AD_SERVICE_DATA_UUID16, b"\xd2\xfc")
    with SimulatedBluetooth([SimSensor(Kind.BTHOME, PLAIN, "BTHome 0001", every=0.1)]) as bt:
        assert bt.simulator is not None
        simulator = bt.simulator
        client = await MessageBus(bus_address=bt.address).connect()
        try:
            good, bad = _Monitor([bthome]), _Monitor([(40, AD_MANUFACTURER_DATA, b"\x01")])
            client.export("/app/good", good)
            client.export("/app/bad", bad)
            manager = client.get_proxy_object(
                "org.bluez",
                "/org/bluez/hci0",
                await client.introspect("org.bluez", "/org/bluez/hci0"),
            ).get_interface("org.bluez.AdvertisementMonitorManager1")
            assert await manager.get_supported_monitor_types() == ["or_patterns"]  # type: ignore[attr-defined]
            await manager.call_register_monitor("/app")  # type: ignore[attr-defined]
            with pytest.raises(DBusError, match="Already Exists"):
                await manager.call_register_monitor("/app")  # type: ignore[attr-defined]
            with pytest.raises(DBusError, match="Does Not Exist"):
                await manager.call_unregister_monitor("/other")  # type: ignore[attr-defined]
            device = f"/org/bluez/hci0/dev_{PLAIN.replace(':', '_')}"
            for _ in range(100):  # bounded: at most 5 s
                if f"DeviceFound {device}" in good.calls:
                    break
                await asyncio.sleep(0.05)
            assert wait_until(lambda: bt.call(lambda: simulator.devices[PLAIN].adverts) >= 3, 5)
            bt.call(simulator.vanish, PLAIN)
            # The simulated BlueZ sends DeviceLost and Release before its reply, in this order.
            await manager.call_unregister_monitor("/app")  # type: ignore[attr-defined]
            found, lost = f"DeviceFound {device}", f"DeviceLost {device}"
            assert good.calls == ["Activate", found, lost, "Release"], "found once, then lost"
            assert bad.calls == ["Release"], "a pattern past 31 bytes is refused"
            # A client that leaves the bus loses its registration.
            await manager.call_register_monitor("/app")  # type: ignore[attr-defined]
            assert bt.call(lambda: len(simulator.monitors.active if simulator.monitors else []))
        finally:
            client.disconnect()
        assert wait_until(
            lambda: bt.call(lambda: not (simulator.monitors and simulator.monitors.active)), 5
        )


async def test_a_gatt_device_unheard_by_a_passive_scan_is_reported_with_the_fix():
    """A GATT sensor's adverts match none of the driver's patterns, so a passive scan never
    hears it (as the simulated BlueZ shows above): its poll says what to change."""
    config = settings_of(
        BleDevice.model_validate(
            {
                "name": "gatt",
                "bus": "radio",
                "address": GATT,
                "points": [{"name": "battery", "characteristic": "2a19", "type": "u8"}],
            }
        )
    )
    heard: dict[str, BLEDevice] = {}  # the scan heard nothing of it
    device = GattDevice(
        config,
        "hci0",
        ConnectionBudget(1),
        heard.get,
        lambda: True,
        ManualClock(0.0),
        1.0,
        passive=True,
    )
    with pytest.raises(DeviceUnreachable, match="set scanning: active for GATT devices"):
        await device.read()
