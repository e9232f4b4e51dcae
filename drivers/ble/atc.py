"""The custom advertisement formats of the ATC_MiThermometer firmware that Xiaomi LYWSD03MMC
(and similar) thermometers are flashed with, as service data of UUID 0x181A. No maintained
parser of Home Assistant's family decodes these (its firmware's BTHome mode is decoded by
bthome-ble), so this is a pure decoder, from the firmwares' documentation and source
(pvvx/ATC_MiThermometer: README, src/custom_beacon.[ch], test_adv_cust.py):

- atc1441 (13 bytes, big-endian): MAC (6, as written), temperature i16 in 0.1 °C, humidity u8 %,
  battery u8 %, battery u16 mV, frame counter u8;
- pvvx "custom" (15 bytes, little-endian): MAC (6, reversed), temperature i16 in 0.01 °C,
  humidity u16 in 0.01 %, battery u16 mV, battery u8 %, frame counter u8, flags u8;
- pvvx encrypted with the bind key ("energy efficient" formats): frame counter u8, the
  AES-CCM ciphertext, a 4-byte tag. The nonce is the MAC (6, reversed) and the 5 bytes of the
  AD structure's head (length, 0x16, UUID 0x1A 0x18, counter); the associated data one byte,
  0x11. Plain text: custom (11 bytes in all) temperature i16 in 0.01 °C, humidity u16 in 0.01 %,
  battery u8 %, flags u8; atc (8 bytes in all) temperature u8 as (°C + 40) * 2, humidity u8 in
  0.5 %, battery u8 % (its top bit the trigger flag). Neither carries the battery voltage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

ATC_SERVICE_UUID = "0000181a-0000-1000-8000-00805f9b34fb"

_ATC1441 = struct.Struct(">6shBBHB")
_PVVX = struct.Struct("<6shHHBBB")
_PVVX_SECRET = struct.Struct("<hHBB")
_ATC_SECRET = struct.Struct("<BBB")
_TAG = 4
#: The service data lengths of the encrypted frames: counter, ciphertext, tag.
_SEALED_SIZES = frozenset({1 + _PVVX_SECRET.size + _TAG, 1 + _ATC_SECRET.size + _TAG})
#: The 16-bit service data AD type and UUID 0x181A as they precede the data on the air.
_AD_HEAD = b"\x16\x1a\x18"
_ASSOCIATED = b"\x11"


@dataclass(frozen=True, slots=True)
class AtcValues:
    firmware: str
    temperature: float
    humidity: float
    battery: int
    #: Battery voltage; the encrypted formats do not carry it.
    voltage: float | None
    counter: int


@dataclass(frozen=True, slots=True)
class Locked:
    """An encrypted frame that the bind key (or its absence) does not open."""

    keyed: bool


def decode_atc(
    address: str, data: bytes, bind_key: bytes | None = None
) -> AtcValues | Locked | None:
    """The values in ``data`` (the 0x181A service data) of the sensor at ``address``; None if
    it is not an ATC frame of that sensor (another length, or another device's MAC);
    :class:`Locked` for an encrypted frame that ``bind_key`` does not open."""
    try:
        mac = bytes.fromhex(address.replace(":", ""))
    except ValueError:
        return None
    if len(mac) != 6:
        return None
    if len(data) in _SEALED_SIZES:
        return _decrypt(mac, data, bind_key)
    return _plain(mac, data)


def _plain(mac: bytes, data: bytes) -> AtcValues | None:
    if len(data) == _ATC1441.size:
        frame_mac, temp, hum, bat, volt, counter = _ATC1441.unpack(data)
        if frame_mac != mac:
            return None
        return AtcValues("atc1441", temp / 10, float(hum), bat, volt / 1000, counter)
    if len(data) == _PVVX.size:
        frame_mac, temp, hum, volt, bat, counter, _flags = _PVVX.unpack(data)
        if frame_mac[::-1] != mac:
            return None
        return AtcValues("pvvx", temp / 100, hum / 100, bat, volt / 1000, counter)
    return None


def _decrypt(mac: bytes, data: bytes, bind_key: bytes | None) -> AtcValues | Locked:
    if bind_key is None or len(bind_key) != 16:
        return Locked(keyed=bind_key is not None)
    counter = data[0]
    # The AD structure's length byte counts its type, UUID, counter, ciphertext and tag.
    head = bytes([len(data) + len(_AD_HEAD)]) + _AD_HEAD + data[:1]
    try:
        plain = AESCCM(bind_key, tag_length=_TAG).decrypt(mac[::-1] + head, data[1:], _ASSOCIATED)
    except InvalidTag:
        return Locked(keyed=True)
    if len(plain) == _PVVX_SECRET.size:
        temp, hum, bat, _flags = _PVVX_SECRET.unpack(plain)
        return AtcValues("pvvx encrypted", temp / 100, hum / 100, bat, None, counter)
    temp_code, hum_code, bat = _ATC_SECRET.unpack(plain)
    return AtcValues("atc encrypted", temp_code / 2 - 40, hum_code / 2, bat & 0x7F, None, counter)
