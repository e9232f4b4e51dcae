"""Advertisement payloads built from the formats' public descriptions, written here apart from
the parsers the gateway uses, so that a test compares two independent readings of each format.

Each encoder takes the values in engineering units and returns the values as the payload
carries them (rounded to its resolution): those are what the gateway must publish.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESCCM


def uuid16(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


BTHOME_UUID = uuid16(0xFCD2)
ATC_UUID = uuid16(0x181A)
MIBEACON_UUID = uuid16(0xFE95)
RUUVI_COMPANY = 0x0499
GOVEE_COMPANY = 0xEC88
APPLE_COMPANY = 0x004C


@dataclass(frozen=True, slots=True)
class Payload:
    """What one advertisement carries: service data or manufacturer data, and the values as
    encoded (the resolution of the format applied)."""

    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]
    values: dict[str, float]


def _mac_bytes(address: str) -> bytes:
    return bytes.fromhex(address.replace(":", ""))


def bthome_v2(
    address: str,
    packet_id: int,
    temperature: float,
    humidity: float,
    battery: int,
    *,
    key: bytes | None = None,
    counter: int = 0,
) -> Payload:
    """BTHome v2 (bthome.io/format): a device information byte (version 2 in bits 5-7, bit 0
    encrypted), then objects in ascending id order: 0x00 packet id u8, 0x01 battery u8 %, 0x02
    temperature s16 0.01 °C, 0x03 humidity u16 0.01 %. Encrypted (bthome.io/encryption): AES-CCM
    with a 4-byte MIC over the objects, nonce = MAC + UUID (d2 fc) + device info + counter; the
    counter (u32 LE) and the MIC follow the ciphertext."""
    t = round(temperature * 100)
    h = round(humidity * 100)
    objects = struct.pack("<BBBBBhBH", 0x00, packet_id & 0xFF, 0x01, battery, 0x02, t, 0x03, h)
    values = {"temperature": t / 100, "humidity": h / 100, "battery": float(battery)}
    if key is None:
        return Payload({BTHOME_UUID: bytes([0x40]) + objects}, {}, values)
    info = bytes([0x41])
    count = struct.pack("<I", counter)
    nonce = _mac_bytes(address) + b"\xd2\xfc" + info + count
    sealed = AESCCM(key, tag_length=4).encrypt(nonce, objects, None)
    ciphertext, mic = sealed[:-4], sealed[-4:]
    return Payload({BTHOME_UUID: info + ciphertext + count + mic}, {}, values)


def ruuvi_rawv2(  # noqa: PLR0917 - the fields of the frame, in order
    address: str,
    sequence: int,
    temperature: float,
    humidity: float,
    pressure_hpa: float,
    battery_mv: int,
) -> Payload:
    """Ruuvi data format 5 (RAWv2), manufacturer data of company 0x0499, big-endian: format 5,
    temperature i16 0.005 °C, humidity u16 0.0025 %, pressure u16 Pa - 50000, acceleration
    x/y/z i16 mG, power u16 (battery mV - 1600 in the top 11 bits, (TX dBm + 40) / 2 in the
    low 5), movement counter u8, measurement sequence u16, MAC."""
    t = round(temperature / 0.005)
    h = round(humidity / 0.0025)
    p = round(pressure_hpa * 100) - 50000
    power = ((battery_mv - 1600) << 5) | ((4 + 40) // 2)
    data = struct.pack(
        ">BhHHhhhHBH6s", 5, t, h, p, 0, 0, 1000, power, 0, sequence & 0xFFFF, _mac_bytes(address)
    )
    values = {
        "temperature": round(t * 0.005, 3),
        "humidity": round(h * 0.0025, 4),
        "pressure": (p + 50000) / 100,
        "voltage": float(battery_mv),
    }
    return Payload({}, {RUUVI_COMPANY: data}, values)


def atc_pvvx(  # noqa: PLR0917 - the fields of the frame, in order
    address: str, counter: int, temperature: float, humidity: float, battery: int, mv: int
) -> Payload:
    """pvvx's "custom" format of the ATC_MiThermometer firmware: service data of 0x181A, 15
    bytes little-endian: MAC reversed, temperature i16 0.01 °C, humidity u16 0.01 %, battery mV
    u16, battery % u8, counter u8, flags u8."""
    t = round(temperature * 100)
    h = round(humidity * 100)
    data = _mac_bytes(address)[::-1] + struct.pack("<hHHBBB", t, h, mv, battery, counter & 0xFF, 0)
    values = {"temperature": t / 100, "humidity": h / 100, "battery": float(battery)}
    return Payload({ATC_UUID: data}, {}, values)


def atc_pvvx_encrypted(  # noqa: PLR0917 - the fields of the frame, in order
    address: str, counter: int, temperature: float, humidity: float, battery: int, key: bytes
) -> Payload:
    """pvvx's encrypted custom format (pvvx/ATC_MiThermometer src/custom_beacon.[ch],
    pvvx_encrypt_data_beacon): service data of 0x181A, 11 bytes: counter u8, then AES-CCM
    (4-byte MIC, associated data the one byte 0x11) of temperature i16 0.01 °C, humidity u16
    0.01 %, battery u8 %, flags u8 (little-endian), then the MIC. The nonce is the MAC reversed
    and the AD structure's head: length (14), type 0x16, UUID 1a 18, counter."""
    t = round(temperature * 100)
    h = round(humidity * 100)
    head = bytes([14, 0x16, 0x1A, 0x18, counter & 0xFF])
    nonce = _mac_bytes(address)[::-1] + head
    sealed = AESCCM(key, tag_length=4).encrypt(
        nonce, struct.pack("<hHBB", t, h, battery, 0), b"\x11"
    )
    values = {"temperature": t / 100, "humidity": h / 100, "battery": float(battery)}
    return Payload({ATC_UUID: head[4:] + sealed}, {}, values)


def atc1441(  # noqa: PLR0917 - the fields of the frame, in order
    address: str, counter: int, temperature: float, humidity: float, battery: int, mv: int
) -> Payload:
    """atc1441's format: service data of 0x181A, 13 bytes big-endian: MAC, temperature i16
    0.1 °C, humidity u8 %, battery u8 %, battery mV u16, counter u8."""
    t = round(temperature * 10)
    h = round(humidity)
    data = _mac_bytes(address) + struct.pack(">hBBHB", t, h, battery, mv, counter & 0xFF)
    values = {"temperature": t / 10, "humidity": float(h), "battery": float(battery)}
    return Payload({ATC_UUID: data}, {}, values)


def govee_h5075(temperature: float, humidity: float, battery: int) -> Payload:
    """Govee H5072/H5075: manufacturer data of 0xEC88, 6 bytes: 0x00, then temperature and
    humidity packed in 24 bits big-endian as temperature*10000 + humidity*10 (bit 23: below
    zero), battery %, 0x00. Advertised with the name GVH5075_XXXX."""
    t = round(abs(temperature) * 10)
    h = round(humidity * 10)
    packed = t * 1000 + h
    if temperature < 0:
        packed |= 0x800000
    data = b"\x00" + packed.to_bytes(3, "big") + bytes([battery, 0])
    sign = -1 if temperature < 0 else 1
    values = {"temperature": sign * t / 10, "humidity": h / 10, "battery": float(battery)}
    return Payload({}, {GOVEE_COMPANY: data}, values)


def thermopro_tp357(temperature: float, humidity: int) -> Payload:
    """ThermoPro TP357: the frame starts in the company id: byte 0 is a constant (0xC2), bytes
    1-2 the temperature i16 LE in 0.1 °C, byte 3 humidity %, byte 4's low two bits the battery
    level (2: full). Advertised with the name "TP357 (XXXX)"."""
    t = round(temperature * 10)
    frame = bytes([0xC2]) + struct.pack("<hB", t, humidity) + bytes([0x02, 0x2C, 0x00])
    company = int.from_bytes(frame[0:2], "little")
    values = {"temperature": t / 10, "humidity": float(humidity), "battery": 100.0}
    return Payload({}, {company: frame[2:]}, values)


def mibeacon_lywsdcgq(address: str, counter: int, temperature: float, humidity: float) -> Payload:
    """Xiaomi MiBeacon (service data of 0xFE95), plain, as the LYWSDCGQ (MJ_HT_V1) sends it:
    frame control u16 LE (version 2 in bits 12-15, object included 0x40, MAC included 0x10),
    product id u16 LE (0x01AA), frame counter u8, MAC reversed, then the object 0x100D (u16 LE
    id, u8 length 4): temperature i16 LE and humidity u16 LE in tenths."""
    t = round(temperature * 10)
    h = round(humidity * 10)
    data = (
        struct.pack("<HHB", 0x2050, 0x01AA, counter & 0xFF)
        + _mac_bytes(address)[::-1]
        + struct.pack("<HBhH", 0x100D, 4, t, h)
    )
    return Payload({MIBEACON_UUID: data}, {}, {"temperature": t / 10, "humidity": h / 10})


#: MiBeacon object ids (Mijia BLE Object Definition) and how each is packed and scaled.
_MI_OBJECTS = {
    "temperature": (0x1004, "<h", 10),
    "humidity": (0x1006, "<H", 10),
    "battery": (0x100A, "<B", 1),
}
#: The LYWSD03MMC's MiBeacon product id.
LYWSD03MMC = 0x055B


def mibeacon_v5_encrypted(
    address: str, counter: int, measurement: str, value: float, key: bytes
) -> Payload:
    """MiBeacon v5, encrypted, as pvvx's firmware sends it for a LYWSD03MMC (src/mi_beacon.c,
    mi_encrypt_data_beacon; the frame control bits of "BLE MiBeacon protocol v5"): service data
    of 0xFE95: frame control u16 LE 0x5858 (version 5, auth mode 2, registered, object and MAC
    included, encrypted), product id u16 LE, frame counter u8, MAC reversed, the object (id u16
    LE, length u8, value) encrypted with AES-CCM (associated data 0x11, 4-byte MIC), the 3
    upper bytes of the 32-bit counter, the MIC. Nonce: MAC reversed, product id, the 32-bit
    counter (LE). One measurement an advertisement, as the sensor sends them."""
    ident, layout, scale = _MI_OBJECTS[measurement]
    raw = round(value * scale)
    count = struct.pack("<I", counter & 0xFFFFFFFF)
    mac = _mac_bytes(address)[::-1]
    pid = struct.pack("<H", LYWSD03MMC)
    obj = struct.pack("<HB", ident, struct.calcsize(layout)) + struct.pack(layout, raw)
    sealed = AESCCM(key, tag_length=4).encrypt(mac + pid + count, obj, b"\x11")
    frame = (
        struct.pack("<H", 0x5858) + pid + count[:1] + mac + sealed[:-4] + count[1:] + sealed[-4:]
    )
    return Payload({MIBEACON_UUID: frame}, {}, {measurement: raw / scale})


def ibeacon(minor: int) -> Payload:
    """An iBeacon (Apple's proximity beacon): manufacturer data of company 0x004C, type 0x02,
    length 0x15, a 16-byte proximity UUID, major and minor u16 big-endian, measured power i8.
    It carries no measurement."""
    uuid = bytes.fromhex("f7826da64fa24e988024bc5b71e0893e")
    frame = b"\x02\x15" + uuid + struct.pack(">HHb", 1, minor & 0xFFFF, -59)
    return Payload({}, {APPLE_COMPANY: frame}, {})
