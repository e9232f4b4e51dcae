"""Advertisements -> measurements, through Home Assistant's parsers.

Every parser (bthome-ble, ruuvitag-ble, xiaomi-ble, govee-ble, thermopro-ble) answers in
sensor-state-data's one model, a ``SensorUpdate``; this module is the one adapter from that model
to fieldgate's values (the ATC firmware's formats, which none of them decodes, come from the pure
:mod:`drivers.ble.atc`). Whatever bytes arrive, :meth:`AdvertDecoder.decode` returns a
:class:`Decoded` or a :class:`Rejected` with its reason: a parser that raises on a malformed
advertisement is a rejection like any other, never an exception out of the driver.

A parser keeps state per sensor (BTHome's packet id, which drops repeated packets; the counter
of encrypted formats), so there is one :class:`AdvertDecoder` per sensor.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from bleak.backends.device import BLEDevice

from drivers.ble.atc import ATC_SERVICE_UUID, Locked, decode_atc
from drivers.ble.settings import Format

#: The parser's own RSSI entity: the driver reports the RSSI of the advertisement itself.
_SIGNAL_STRENGTH = "signal_strength"

#: format -> (module, class) of its parser, imported when a sensor of that format is opened.
_PARSERS: dict[Format, tuple[str, str]] = {
    Format.BTHOME: ("bthome_ble", "BTHomeBluetoothDeviceData"),
    Format.RUUVI: ("ruuvitag_ble", "RuuvitagBluetoothDeviceData"),
    Format.XIAOMI: ("xiaomi_ble", "XiaomiBluetoothDeviceData"),
    Format.GOVEE: ("govee_ble", "GoveeBluetoothDeviceData"),
    Format.THERMOPRO: ("thermopro_ble", "ThermoProBluetoothDeviceData"),
}
#: Home Assistant's parsers that take a bind key (the ATC formats' own decoder, which takes
#: one too, is in :mod:`drivers.ble.atc`).
_KEYED = frozenset({Format.BTHOME, Format.XIAOMI})


@dataclass(frozen=True, slots=True)
class Advert:
    """One advertisement as BlueZ reported it (bleak's ``AdvertisementData``, flattened)."""

    address: str
    name: str | None
    rssi: int
    manufacturer_data: Mapping[int, bytes]
    service_data: Mapping[str, bytes]
    service_uuids: tuple[str, ...] = ()
    tx_power: int | None = None
    #: Monotonic seconds when it was heard (BTHome's duplicate filter looks at the gap).
    time: float = 0.0


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str
    value: float | int | str
    unit: str | None = None
    #: The parser's device class (temperature, humidity, battery ...), for `scan ble`.
    device_class: str | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    """The measurements an advertisement carried, and what the parser says the sensor is."""

    format: Format
    measurements: tuple[Measurement, ...]
    model: str | None = None
    device_name: str | None = None
    manufacturer: str | None = None


class Rejection(StrEnum):
    #: No parser (or not the configured one) recognises the bytes.
    UNDECODABLE = "undecodable"
    #: A repeat of a packet already decoded (BTHome's packet id), or nothing new in it.
    NOTHING_NEW = "nothing new"
    #: Encrypted, and the bind key is missing or wrong.
    KEY = "bind key"


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: Rejection
    detail: str = ""


class _Parser(Protocol):
    def decode(self, advert: Advert) -> Decoded | Rejected: ...


class _HomeAssistantParser:
    """One of Home Assistant's parsers, for one sensor."""

    def __init__(self, fmt: Format, bind_key: bytes | None) -> None:
        module_name, class_name = _PARSERS[fmt]
        parser_class = getattr(importlib.import_module(module_name), class_name)
        self._parser: Any = parser_class(bind_key) if fmt in _KEYED else parser_class()
        self._format = fmt
        self._bind_key = bind_key
        #: The value objects of the last update: a parser hands back every value it ever
        #: decoded, and only new objects are news.
        self._seen: dict[Any, Any] = {}

    def decode(self, advert: Advert) -> Decoded | Rejected:
        try:
            update = self._parser.update(_service_info(advert))
        except Exception as exc:  # noqa: BLE001 - a parser's bug on bad bytes is a rejection
            return Rejected(Rejection.UNDECODABLE, f"{type(exc).__name__} in the parser")
        values = {**update.entity_values, **update.binary_entity_values}
        fresh = [
            value
            for key, value in values.items()
            if key.key != _SIGNAL_STRENGTH and self._seen.get(key) is not value
        ]
        had_values = bool(self._seen)
        self._seen = values
        if fresh:
            return _decoded(self._format, update, fresh)
        if _key_trouble(self._parser):
            return Rejected(Rejection.KEY, _key_detail(self._bind_key))
        return Rejected(Rejection.NOTHING_NEW if had_values else Rejection.UNDECODABLE)


class _AtcParser:
    """The pure ATC decoder (:mod:`drivers.ble.atc`), with its frame counter as packet id."""

    def __init__(self, bind_key: bytes | None) -> None:
        self._counter: int | None = None
        self._bind_key = bind_key

    def decode(self, advert: Advert) -> Decoded | Rejected:
        data = advert.service_data.get(ATC_SERVICE_UUID)
        values = decode_atc(advert.address, data, self._bind_key) if data is not None else None
        if values is None:
            return Rejected(Rejection.UNDECODABLE)
        if isinstance(values, Locked):
            return Rejected(Rejection.KEY, _key_detail(self._bind_key))
        if values.counter == self._counter:
            return Rejected(Rejection.NOTHING_NEW)
        self._counter = values.counter
        measurements = [
            Measurement("temperature", values.temperature, "°C", "temperature"),
            Measurement("humidity", values.humidity, "%", "humidity"),
            Measurement("battery", values.battery, "%", "battery"),
        ]
        if values.voltage is not None:
            measurements.append(Measurement("voltage", values.voltage, "V", "voltage"))
        return Decoded(
            format=Format.ATC,
            measurements=tuple(measurements),
            model=f"ATC_MiThermometer ({values.firmware})",
            device_name=advert.name,
        )


def _parser(fmt: Format, bind_key: bytes | None) -> _Parser:
    return _AtcParser(bind_key) if fmt is Format.ATC else _HomeAssistantParser(fmt, bind_key)


def _service_info(advert: Advert) -> Any:
    """habluetooth's ``BluetoothServiceInfoBleak``, which every parser takes."""
    from habluetooth import BluetoothServiceInfoBleak  # noqa: PLC0415 - heavy, only once used

    device = BLEDevice(advert.address, advert.name, None)
    return BluetoothServiceInfoBleak(
        name=advert.name or "",
        address=advert.address,
        rssi=advert.rssi,
        manufacturer_data=dict(advert.manufacturer_data),
        service_data=dict(advert.service_data),
        service_uuids=list(advert.service_uuids),
        source="fieldgate",
        device=device,
        advertisement=None,
        connectable=True,
        time=advert.time,
        tx_power=advert.tx_power,
    )


#: When several parsers reject an advertisement, the reason worth reporting first.
_WORST_FIRST = (Rejection.KEY, Rejection.NOTHING_NEW, Rejection.UNDECODABLE)


class AdvertDecoder:
    """Decodes the advertisements of one sensor. With :attr:`Format.AUTO` every parser is
    tried until one decodes the sensor's advertisements; that one is kept."""

    def __init__(self, fmt: Format, bind_key: bytes | None = None) -> None:
        candidates = [f for f in Format if f is not Format.AUTO] if fmt is Format.AUTO else [fmt]
        self._parsers: dict[Format, _Parser] = {c: _parser(c, bind_key) for c in candidates}
        self.format: Format | None = None if fmt is Format.AUTO else fmt

    def decode(self, advert: Advert) -> Decoded | Rejected:
        if self.format is not None:
            return self._parsers[self.format].decode(advert)
        rejections: list[Rejected] = []
        for fmt, parser in self._parsers.items():
            outcome = parser.decode(advert)
            if isinstance(outcome, Decoded):
                self.format = fmt
                return outcome
            rejections.append(outcome)
        return min(rejections, key=lambda r: _WORST_FIRST.index(r.reason))


def _key_trouble(parser: Any) -> bool:
    scheme = getattr(parser, "encryption_scheme", None)
    encrypted = scheme is not None and getattr(scheme, "name", "NONE") != "NONE"
    return encrypted and not getattr(parser, "bindkey_verified", True)


def _key_detail(bind_key: bytes | None) -> str:
    if bind_key is None:
        return "the sensor encrypts its advertisements and no bind key is configured"
    return "the sensor's advertisements do not decrypt with the configured bind key"


def _decoded(fmt: Format, update: Any, fresh: list[Any]) -> Decoded:
    descriptions = {**update.entity_descriptions, **update.binary_entity_descriptions}
    measurements: list[Measurement] = []
    for value in fresh:
        native = _plain(value.native_value)
        if native is None:
            continue
        key = value.device_key
        description = descriptions.get(key)
        unit = getattr(description, "native_unit_of_measurement", None)
        device_class = getattr(description, "device_class", None)
        measurements.append(
            Measurement(
                name=_text(key.key)
                if key.device_id is None
                else f"{key.device_id}_{_text(key.key)}",
                value=native,
                unit=_text(unit) if unit else None,
                device_class=_text(device_class) if device_class else None,
            )
        )
    info = update.devices.get(None) or next(iter(update.devices.values()), None)
    return Decoded(
        format=fmt,
        measurements=tuple(measurements),
        model=getattr(info, "model", None),
        device_name=getattr(info, "name", None),
        manufacturer=getattr(info, "manufacturer", None),
    )


def _text(value: object) -> str:
    """An enum of the parsers' model (a key, unit or device class) as its plain text."""
    return str(getattr(value, "value", value))


def _plain(value: object) -> float | int | str | None:  # noqa: PLR0911 - one per kind
    """A parser's value as a payload value: numbers stay numbers (a bool is 1 or 0), dates
    become ISO 8601 text, a non-finite float is no value."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        return value
    return None
