"""The custom advertisement formats of the ATC_MiThermometer firmware that Xiaomi LYWSD03MMC
(and similar) thermometers are flashed with, as service data of UUID 0x181A. No maintained
parser of Home Assistant's family decodes these (its firmware's BTHome mode is decoded by
bthome-ble), so this is a pure decoder, from the firmwares' documentation:

- atc1441 (13 bytes, big-endian): MAC (6, as written), temperature i16 in 0.1 °C, humidity u8 %,
  battery u8 %, battery u16 mV, frame counter u8;
- pvvx "custom" (15 bytes, little-endian): MAC (6, reversed), temperature i16 in 0.01 °C,
  humidity u16 in 0.01 %, battery u16 mV, battery u8 %, frame counter u8, flags u8.

The encrypted variants (8 and 11 bytes) are not decoded: configure such a sensor's firmware to
BTHome (encrypted if need be) instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ATC_SERVICE_UUID = "0000181a-0000-1000-8000-00805f9b34fb"

_ATC1441 = struct.Struct(">6shBBHB")
_PVVX = struct.Struct("<6shHHBBB")


@dataclass(frozen=True, slots=True)
class AtcValues:
    firmware: str
    temperature: float
    humidity: float
    battery: int
    voltage: float
    counter: int


def decode_atc(address: str, data: bytes) -> AtcValues | None:
    """The values in ``data`` (the 0x181A service data) of the sensor at ``address``; None if
    it is not an ATC frame of that sensor (another length, or another device's MAC)."""
    try:
        mac = bytes.fromhex(address.replace(":", ""))
    except ValueError:
        return None
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
