"""bleak's view of an advertisement turned into :class:`drivers.ble.decode.Advert`, shared by
the driver and ``fieldgate scan ble``."""

from __future__ import annotations

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from drivers.ble.decode import Advert


def advert_from(device: BLEDevice, data: AdvertisementData, now: float) -> Advert:
    return Advert(
        address=device.address.upper(),
        name=data.local_name,
        rssi=data.rssi,
        manufacturer_data=dict(data.manufacturer_data),
        service_data=dict(data.service_data),
        service_uuids=tuple(data.service_uuids),
        tx_power=data.tx_power,
        time=now,
    )
