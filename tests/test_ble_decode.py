"""Advertisements -> values through Home Assistant's real parsers (drivers.ble.decode), the
pure ATC decoder, GATT characteristic bytes, bind keys and the BLE config. Payloads come from
hw-sim's encoders, written from the formats' descriptions apart from the parsers."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from fieldgate_sim.bluez import formats
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ble.config import BleBus, BleDevice, GattPoint
from drivers.ble.decode import Advert, AdvertDecoder, Decoded, Rejected, Rejection
from drivers.ble.driver import BleAdapter
from drivers.ble.gatt import decode_characteristic
from drivers.ble.keys import bind_key_of
from drivers.ble.settings import (
    BleBusSettings,
    BleDeviceSettings,
    Format,
    GattMode,
    GattPointSettings,
    GattType,
    Sampling,
    ScanningMode,
)
from gateway.clock import SystemClock
from gateway.config.handover import settings_of, to_settings
from gateway.config.loader import parse_config
from gateway.errors import ConfigError, DeviceError, DeviceProtocolError
from gateway.readings import DeviceIdentity, DeviceInfo, PointInfo
from tests.harness import REPO, run_fieldgate

ADDRESS = "54:48:E6:8F:80:A5"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


def advert(payload: formats.Payload, name: str = "sensor", time: float = 1.0) -> Advert:
    return Advert(ADDRESS, name, -60, payload.manufacturer_data, payload.service_data, time=time)


def values(outcome: Decoded | Rejected) -> dict[str, float | int | str]:
    assert isinstance(outcome, Decoded), outcome
    return {m.name: m.value for m in outcome.measurements}


@pytest.mark.parametrize(
    ("payload", "name", "fmt", "key"),
    [
        (formats.bthome_v2(ADDRESS, 1, 21.37, 45.5, 88), "BTHome", Format.BTHOME, None),
        (
            formats.bthome_v2(ADDRESS, 1, -5.37, 45.5, 88, key=KEY, counter=7),
            "BTHome",
            Format.BTHOME,
            KEY,
        ),
        (
            formats.ruuvi_rawv2(ADDRESS, 1, 21.37, 45.5, 1013.25, 2950),
            "Ruuvi 80A5",
            Format.RUUVI,
            None,
        ),
        (formats.atc_pvvx(ADDRESS, 1, 21.37, 45.5, 88, 2950), "ATC_8F80A5", Format.ATC, None),
        (formats.atc1441(ADDRESS, 1, -1.5, 45.5, 88, 2950), "ATC_8F80A5", Format.ATC, None),
        (formats.govee_h5075(-3.2, 45.5, 88), "GVH5075_80A5", Format.GOVEE, None),
        (formats.thermopro_tp357(21.37, 45), "TP357 (80A5)", Format.THERMOPRO, None),
        (formats.mibeacon_lywsdcgq(ADDRESS, 1, -7.3, 55.2), "MJ_HT_V1", Format.XIAOMI, None),
        (
            formats.atc_pvvx_encrypted(ADDRESS, 9, -3.21, 55.5, 77, KEY),
            "ATC_8F80A5",
            Format.ATC,
            KEY,
        ),
        *(
            (
                formats.mibeacon_v5_encrypted(ADDRESS, 70000 + n, measurement, value, KEY),
                "LYWSD03MMC",
                Format.XIAOMI,
                KEY,
            )
            for n, (measurement, value) in enumerate(
                (("temperature", -7.3), ("humidity", 55), ("battery", 77))
            )
        ),
    ],
)
def test_every_format_decodes_to_the_values_the_sensor_sent(payload, name, fmt, key):
    for chosen in (fmt, Format.AUTO):
        decoder = AdvertDecoder(chosen, key)
        decoded = values(decoder.decode(advert(payload, name)))
        for measurement, sent in payload.values.items():
            assert decoded[measurement] == pytest.approx(sent), (chosen, measurement)
        assert decoder.format is fmt


def test_the_pvvx_firmware_authors_encrypted_frame_decodes_to_its_values():
    """The frame of pvvx/ATC_MiThermometer's test_adv_cust.py (AD structure
    0e161a1821a3dbe71940006994b078, bind key 1234…9012, MAC A4:C1:38:0B:5E:ED)."""
    frame = {formats.ATC_UUID: bytes.fromhex("21a3dbe71940006994b078")}
    key = bytes.fromhex("12345678901234567890123456789012")
    sensor = Advert("A4:C1:38:0B:5E:ED", "ATC_0B5EED", -60, {}, frame)
    assert values(AdvertDecoder(Format.ATC, key).decode(sensor)) == {
        "temperature": 26.8,
        "humidity": 38.2,
        "battery": 100,
    }
    # The nonce holds the MAC: another sensor's frame does not open with the key.
    elsewhere = Advert("A4:C1:38:0B:5E:EE", "ATC_0B5EEE", -60, {}, frame)
    outcome = AdvertDecoder(Format.ATC, key).decode(elsewhere)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is Rejection.KEY


@pytest.mark.parametrize(
    ("payload", "fmt"),
    [
        (formats.atc_pvvx_encrypted(ADDRESS, 3, 21.0, 45.0, 88, KEY), Format.ATC),
        (formats.mibeacon_v5_encrypted(ADDRESS, 3, "temperature", 21.0, KEY), Format.XIAOMI),
    ],
)
def test_encrypted_atc_and_mibeacon_without_their_key_are_key_rejections(payload, fmt):
    for key in (bytes(16), None):
        for chosen in (fmt, Format.AUTO):
            outcome = AdvertDecoder(chosen, key).decode(advert(payload))
            assert isinstance(outcome, Rejected), (chosen, key)
            assert outcome.reason is Rejection.KEY, (chosen, key)


def test_an_encrypted_sensor_with_the_wrong_key_or_none_is_a_key_rejection():
    payload = formats.bthome_v2(ADDRESS, 1, 21.0, 45.0, 88, key=KEY, counter=1)
    wrong = AdvertDecoder(Format.BTHOME, bytes(16)).decode(advert(payload))
    assert isinstance(wrong, Rejected)
    assert wrong.reason is Rejection.KEY
    assert "do not decrypt" in wrong.detail
    missing = AdvertDecoder(Format.AUTO).decode(advert(payload))
    assert isinstance(missing, Rejected)
    assert missing.reason is Rejection.KEY
    assert "no bind key" in missing.detail


def test_a_repeated_bthome_packet_is_nothing_new():
    decoder = AdvertDecoder(Format.BTHOME)
    payload = formats.bthome_v2(ADDRESS, 9, 21.0, 45.0, 88)
    assert isinstance(decoder.decode(advert(payload, time=1.0)), Decoded)
    repeat = decoder.decode(advert(payload, time=1.5))
    assert repeat == Rejected(Rejection.NOTHING_NEW)
    following = formats.bthome_v2(ADDRESS, 10, 21.5, 45.0, 88)
    assert values(decoder.decode(advert(following, time=2.0)))["temperature"] == 21.5


KNOWN_UUIDS = st.sampled_from(
    [formats.BTHOME_UUID, formats.ATC_UUID, formats.uuid16(0xFE95), formats.uuid16(0x181C)]
)
KNOWN_COMPANIES = st.sampled_from([formats.RUUVI_COMPANY, formats.GOVEE_COMPANY, 0x0001, 0xC2C2])


@settings(max_examples=300, deadline=None)
@given(
    service_data=st.dictionaries(
        KNOWN_UUIDS | st.uuids().map(str), st.binary(max_size=40), max_size=3
    ),
    manufacturer_data=st.dictionaries(
        KNOWN_COMPANIES | st.integers(0, 0xFFFF), st.binary(max_size=40), max_size=3
    ),
    name=st.none()
    | st.sampled_from(["GVH5075_0001", "TP357 (0001)", "Ruuvi 0001", "ATC_1"])
    | st.text(max_size=20),
    fmt=st.sampled_from(list(Format)),
    key=st.none() | st.binary(min_size=16, max_size=16),
)
def test_any_advertisement_bytes_give_values_or_a_rejection(
    service_data, manufacturer_data, name, fmt, key
):
    decoder = AdvertDecoder(fmt, key)
    for time in (1.0, 1.2):  # twice: the parsers keep state between advertisements
        outcome = decoder.decode(
            Advert(ADDRESS, name, -70, manufacturer_data, service_data, time=time)
        )
        assert isinstance(outcome, Decoded | Rejected)
        if isinstance(outcome, Decoded):
            for measurement in outcome.measurements:
                assert isinstance(measurement.value, int | float | str)
                assert measurement.name


def point(**fields: object) -> GattPointSettings:
    settings: GattPointSettings = settings_of(
        GattPoint.model_validate({"name": "p", "characteristic": "2a6e", **fields})
    )
    return settings


def ble_device(fields: dict[str, object]) -> BleDeviceSettings:
    """A BLE device's settings, as the driver gets them from a validated config."""
    settings: BleDeviceSettings = settings_of(BleDevice.model_validate(fields))
    return settings


def radio() -> BleBusSettings:
    settings: BleBusSettings = settings_of(BleBus(name="radio", type="ble"))
    return settings


@pytest.mark.parametrize(
    ("fields", "data", "expected"),
    [
        ({"type": "i16", "scale": 0.01}, struct.pack("<h", -537), -5.37),
        ({"type": "u16", "scale": 0.01}, struct.pack("<H", 4550), 45.5),
        ({"type": "u8"}, bytes([88]), 88),
        ({"type": "i8"}, bytes([0xFE]), -2),
        ({"type": "u32", "byte_order": "big"}, struct.pack(">I", 4_000_000_000), 4_000_000_000),
        ({"type": "f32"}, struct.pack("<f", 21.37), 21.37),
        ({"type": "u16", "offset_bytes": 1}, b"\x00" + struct.pack("<H", 513), 513),
        ({"type": "string"}, b"TP357\x00junk", "TP357"),
    ],
)
def test_gatt_bytes_decode_like_modbus_points(fields, data, expected):
    assert decode_characteristic(point(**fields), data) == pytest.approx(expected)


def test_gatt_bytes_too_short_are_refused():
    with pytest.raises(ValueError, match="hold no u32"):
        decode_characteristic(point(type="u32"), b"\x01\x02")


def test_a_bind_key_comes_from_its_file_or_credential_and_never_into_a_message(tmp_path: Path):
    key_file = tmp_path / "key"
    key_file.write_text(KEY.hex().upper() + "\n")
    device = ble_device(
        {"name": "s", "bus": "b", "address": ADDRESS, "bind_key_file": str(key_file)}
    )
    assert bind_key_of(device, {}) == KEY
    credential = ble_device(
        {"name": "s", "bus": "b", "address": ADDRESS, "bind_key_credential": "cold-room"}
    )
    (tmp_path / "cold-room").write_text(KEY.hex())
    assert bind_key_of(credential, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == KEY
    with pytest.raises(DeviceProtocolError, match="LoadCredential"):
        bind_key_of(credential, {})
    key_file.write_text("not-a-key " + KEY.hex()[:10])
    with pytest.raises(DeviceProtocolError) as bad:
        bind_key_of(device, {})
    assert KEY.hex()[:10] not in str(bad.value)


CONFIG = """\
gateway: {{id: gw}}
mqtt: {{host: 127.0.0.1}}
buffer: {{path: /var/lib/fieldgate/b.db}}
buses:
  - {{name: radio, type: ble}}
devices:
  - {device}
"""


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        ("{name: s, bus: radio}", "give the sensor's address"),
        ("{name: s, bus: radio, address: 'A4:C1:38:12:34'}", "not a Bluetooth address"),
        (
            "{name: s, bus: radio, address: 'A4:C1:38:12:34:56', format: ruuvi, bind_key_file: /k}",
            "never encrypted",
        ),
        ("{name: s, bus: radio, address: 'A4:C1:38:12:34:56', bind_key: abc}", "bind_key"),
        (
            "{name: s, bus: radio, address: 'A4:C1:38:12:34:56', format: bthome, "
            "points: [{name: t, characteristic: 2a6e, type: i16}]}",
            "takes no format",
        ),
        (
            "{name: s, bus: radio, address: 'A4:C1:38:12:34:56', "
            "points: [{name: t, characteristic: 0x2A6E, type: i16}]}",
            "write the UUID in quotes",
        ),
        (
            "{name: s, bus: radio, address: 'A4:C1:38:12:34:56', stale_after: 0.5s}",
            "shorter than allowed",
        ),
    ],
)
def test_bad_ble_devices_are_refused_with_the_key_and_the_fix(device, problem):
    with pytest.raises(ConfigError) as refused:
        parse_config(CONFIG.format(device=device), "fieldgate.yaml")
    text = "\n".join(refused.value.problems)
    assert "devices[0]" in text
    assert problem in text


def test_a_good_ble_config_is_accepted():
    config = parse_config(
        CONFIG.format(
            device="{name: s, bus: radio, name_pattern: 'ATC_*', sampling: mean, "
            "stale_after: 10m, bind_key_credential: cold-room}"
        ),
        "fieldgate.yaml",
    )
    device = config.devices[0]
    assert isinstance(device, BleDevice)
    assert device.advert_format is Format.AUTO
    assert device.stale_after == 600.0


def test_the_settings_of_a_ble_config_carry_its_values_and_describe_its_devices():
    config = to_settings(
        parse_config(
            CONFIG.format(
                device="{name: s, bus: radio, name_pattern: 'ATC_*', sampling: mean, "
                "stale_after: 90s, bind_key_credential: cold-room}\n"
                "  - {name: g, bus: radio, address: 'a4:c1:38:12:34:56', interval: 1m, points: ["
                "{name: hum, characteristic: 2a6f, type: u16, scale: 0.01, unit: '%'}, "
                "{name: fw, characteristic: '0x2A26', type: string, mode: notify}]}"
            ),
            "fieldgate.yaml",
        )
    )
    bus = config.buses[0]
    assert isinstance(bus, BleBusSettings)
    assert (bus.adapter, bus.scanning, bus.max_connections) == ("hci0", ScanningMode.ACTIVE, 3)
    advertiser, gatt = config.devices
    assert isinstance(advertiser, BleDeviceSettings)
    assert isinstance(gatt, BleDeviceSettings)
    # Where the key is, never the key: the driver reads it when the bus opens.
    assert advertiser.bind_key_credential == "cold-room"
    assert advertiser.bind_key_file is None
    assert (advertiser.advert_format, advertiser.sampling) == (Format.AUTO, Sampling.MEAN)
    assert advertiser.stale_after == 90.0
    assert not advertiser.is_gatt
    assert advertiser.info() == DeviceInfo("s", "radio", "ble")
    assert gatt.is_gatt
    assert gatt.address == "A4:C1:38:12:34:56"
    assert gatt.interval == 60.0
    humidity, firmware = gatt.points
    assert humidity.characteristic == "00002a6f-0000-1000-8000-00805f9b34fb"
    assert (humidity.type, humidity.scale, humidity.mode) == (GattType.U16, 0.01, GattMode.READ)
    assert (firmware.type, firmware.mode) == (GattType.STRING, GattMode.NOTIFY)
    assert gatt.info() == DeviceInfo(
        "g",
        "radio",
        "ble",
        points=(PointInfo("hum", "%", device_class="humidity"), PointInfo("fw", None, text=True)),
    )
    # A config-side reader (check, Home Assistant's discovery tests) hears the same.
    models = parse_config(
        CONFIG.format(
            device="{name: g, bus: radio, address: 'A4:C1:38:12:34:56', "
            "points: [{name: hum, characteristic: 2a6f, type: u16}]}"
        ),
        "fieldgate.yaml",
    )
    assert models.devices[0].info() == to_settings(models).devices[0].info()


class _Sink:
    def __init__(self) -> None:
        self.failed: list[str] = []
        self.described: list[tuple[str, DeviceIdentity]] = []

    async def submit(self, reading: object) -> None:
        return None

    def describe(self, device: str, identity: DeviceIdentity) -> None:
        self.described.append((device, identity))

    def device_failed(self, device: str, error: DeviceError) -> None:
        self.failed.append(f"{device}: {error}")


@settings(max_examples=150, deadline=None)
@given(
    adverts=st.lists(
        st.tuples(
            st.sampled_from(["A4:C1:38:00:00:01", "A4:C1:38:00:00:02", "DE:AD:BE:EF:00:08"]),
            st.dictionaries(KNOWN_UUIDS, st.binary(max_size=32), max_size=2),
            st.dictionaries(KNOWN_COMPANIES, st.binary(max_size=32), max_size=2),
        ),
        max_size=20,
    )
)
def test_the_driver_takes_any_advertisement_bytes_and_counts_each(adverts):
    devices = [
        ble_device({"name": "auto", "bus": "radio", "address": "A4:C1:38:00:00:01"}),
        ble_device(
            {"name": "bthome", "bus": "radio", "address": "A4:C1:38:00:00:02", "format": "bthome"}
        ),
    ]
    adapter = BleAdapter(radio(), devices, SystemClock())
    sink = _Sink()
    asyncio.run(adapter.open_decoders(sink))
    for address, service_data, manufacturer_data in adverts:
        data = AdvertisementData(
            local_name=None,
            manufacturer_data=manufacturer_data,
            service_data=service_data,
            service_uuids=[],
            tx_power=None,
            rssi=-70,
            platform_data=(),
        )
        adapter.on_advert(BLEDevice(address, None, None), data)
    configured = sum(1 for address, _, _ in adverts if address != "DE:AD:BE:EF:00:08")
    assert adapter.heard == configured
    # A bug in the callback would be caught there and counted as a rejection too: none was.
    assert adapter.decoded + adapter.rejected == configured
    assert adapter.faults == 0


def _advertise(adapter: BleAdapter, address: str, payload: formats.Payload) -> None:
    data = AdvertisementData(
        local_name="LYWSD03MMC",
        manufacturer_data=payload.manufacturer_data,
        service_data=payload.service_data,
        service_uuids=[],
        tx_power=None,
        rssi=-70,
        platform_data=(),
    )
    adapter.on_advert(BLEDevice(address, None, None), data)


def test_a_wrong_key_is_counted_per_advert_and_reported_once_without_the_key(tmp_path: Path):
    wrong = "00112233445566778899aabbccddeeff"
    (tmp_path / "k").write_text(wrong)
    device = ble_device(
        {"name": "s", "bus": "radio", "address": ADDRESS, "bind_key_file": str(tmp_path / "k")}
    )
    adapter = BleAdapter(radio(), [device], SystemClock())
    sink = _Sink()
    asyncio.run(adapter.open_decoders(sink))
    for n in range(5):
        _advertise(adapter, ADDRESS, formats.atc_pvvx_encrypted(ADDRESS, n, 21.0, 45.0, 88, KEY))
    assert (adapter.heard, adapter.decoded, adapter.rejected) == (5, 0, 5)
    assert len(sink.failed) == 1
    assert "do not decrypt with the configured bind key" in sink.failed[0]
    assert wrong not in sink.failed[0]
    assert not sink.described


def test_the_driver_describes_a_sensor_when_it_learns_something_new_of_it(tmp_path: Path):
    (tmp_path / "k").write_text(KEY.hex())
    device = ble_device(
        {"name": "mi", "bus": "radio", "address": ADDRESS, "bind_key_file": str(tmp_path / "k")}
    )
    adapter = BleAdapter(radio(), [device], SystemClock())
    sink = _Sink()
    asyncio.run(adapter.open_decoders(sink))
    for n, (measurement, value) in enumerate((("temperature", 4.5), ("temperature", 4.6))):
        _advertise(
            adapter, ADDRESS, formats.mibeacon_v5_encrypted(ADDRESS, n, measurement, value, KEY)
        )
    assert len(sink.described) == 1  # a second temperature says nothing new
    _advertise(adapter, ADDRESS, formats.mibeacon_v5_encrypted(ADDRESS, 5, "humidity", 55, KEY))
    assert len(sink.described) == 2
    device_name, identity = sink.described[-1]
    assert device_name == "mi"
    assert (identity.manufacturer, identity.model) == ("Xiaomi", "LYWSD03MMC")
    assert {p.name: p.device_class for p in identity.points} == {
        "rssi": "signal_strength",
        "temperature": "temperature",
        "humidity": "humidity",
    }


def test_an_inline_bind_key_is_refused_without_echoing_it():
    case = REPO / "tests" / "config_cases" / "ble_inline_bind_key" / "config.yaml"
    result = run_fieldgate("check", str(case))
    assert result.returncode == 78
    assert "did you mean 'bind_key_file'" in result.stderr
    assert "231d39c1" not in result.stderr


def test_checking_a_config_with_a_ble_bus_imports_no_ble_library():
    # The catalog names the BLE driver by module path: validating a config (what `check` and
    # the start of `run` do) must not pull in bleak, D-Bus or the parsers.
    probe = (
        "import sys; from pathlib import Path; from gateway.config.loader import load_config; "
        "load_config(Path('examples/demo.yaml')); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'bleak', 'dbus_fast', 'bthome_ble', 'habluetooth', 'sensor_state_data'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "[]"
