"""The BLE bus driver: one adapter, scanned with bleak (BlueZ over D-Bus on Linux).

Advertising sensors make it a :class:`~gateway.driver.StreamingBusDriver`: ``stream(sink)``
scans, decodes each configured sensor's advertisements (:mod:`drivers.ble.decode`), samples them
into one reading per interval and reports a sensor missing after its staleness limit
(:mod:`drivers.ble.sampling`). GATT devices are polled devices (:mod:`drivers.ble.gatt`), found
by the same scan, within the adapter's connection budget.

Adapter trouble (no D-Bus, BlueZ not running, the adapter missing or powered off, passive
scanning unsupported) is one log line per kind of trouble and every sensor of the bus reported
failed; the scan is retried with a capped backoff, and the rest of the gateway goes on. A scan
that hears nothing at all for the shortest staleness limit is restarted, which is how an adapter
that went away under a running scan is noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError

from drivers.ble.decode import AdvertDecoder, Decoded, Rejection
from drivers.ble.gatt import GattDevice
from drivers.ble.keys import bind_key_of
from drivers.ble.sampling import SensorSampler
from drivers.ble.scan_data import advert_from
from drivers.ble.settings import BleBusSettings, BleDeviceSettings, ScanningMode
from gateway.backoff import Backoff
from gateway.clock import Clock
from gateway.driver import LineCounts, ReadingSink
from gateway.errors import DeviceError, DeviceProtocolError, DeviceTimeout, DeviceUnreachable
from gateway.quantities import format_duration
from gateway.readings import DeviceIdentity, PointInfo, PointValue, reading_from_values

log = logging.getLogger(__name__)

#: Libraries whose loggers speak per advertisement (a failed decryption is a warning, a
#: garbled frame an error, each time): the driver counts those and reports them itself, once.
_CHATTY_LOGGERS = ("bthome_ble", "xiaomi_ble", "govee_ble", "thermopro_ble", "ruuvitag_ble")
#: Stopping a scan is bounded: a BlueZ that went away must not hold up a restart or shutdown.
_STOP_TIMEOUT = 5.0
#: With only GATT devices, how long a silent scan runs before it is restarted.
_SILENCE_DEFAULT = 60.0
#: The advertisement's own RSSI, which the driver adds to every sensor's values.
_RSSI = PointInfo("rssi", "dBm", device_class="signal_strength")

#: The advertisement shapes of the supported formats, for passive scanning (BlueZ's
#: advertisement monitor only reports what matches one of them).
PASSIVE_PATTERNS: list[OrPattern | tuple[int, AdvertisementDataType, bytes]] = [
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc"),  # BTHome
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\x1a\x18"),  # ATC/pvvx
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\x95\xfe"),  # MiBeacon
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x99\x04"),  # Ruuvi
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x88\xec"),  # Govee
    OrPattern(0, AdvertisementDataType.COMPLETE_LOCAL_NAME, b"TP3"),  # ThermoPro
]


class ConnectionBudget:
    """The adapter's GATT connection slots: a poll waits (in turn) for one to free up."""

    def __init__(self, slots: int) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self.connects = 0
        self.timeouts = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._semaphore:
            yield


@dataclass(slots=True)
class _Advertiser:
    """A configured advertising sensor and what the driver knows of it."""

    config: BleDeviceSettings
    sampler: SensorSampler
    address: str | None
    decoder: AdvertDecoder | None = None
    key_reported: bool = False
    #: What the sensor said of itself so far (its parser's model and name, a unit and device
    #: class per value), as last reported to the sink; None until its first decoded advert.
    identity: DeviceIdentity | None = None
    #: The names of ``identity``'s points and the parser's last (manufacturer, model, name):
    #: what tells an advertisement that says nothing new cheaply.
    point_names: frozenset[str] = frozenset()
    said: tuple[str | None, str | None, str | None] | None = None
    rejected: dict[Rejection, int] = field(default_factory=dict)


class AdapterTrouble(Exception):
    """The adapter cannot scan; the message says why and what to check."""


def describe_trouble(exc: BaseException, bus: BleBusSettings) -> str:  # noqa: PLR0911 - one per kind
    """One line a technician can act on, from what bleak or dbus-fast raised."""
    adapter = bus.adapter
    if isinstance(exc, BleakDBusError):
        if exc.dbus_error == "org.bluez.Error.NotReady":
            return f"adapter {adapter} is powered off (bluetoothctl power on; check rfkill)"
        if exc.dbus_error in {
            "org.freedesktop.DBus.Error.ServiceUnknown",
            "org.freedesktop.DBus.Error.NameHasNoOwner",
        }:
            return "BlueZ (bluetoothd) is not running on the system D-Bus"
        return (
            f"BlueZ refused to scan on {adapter}: {exc.dbus_error} {exc.dbus_error_details or ''}"
        )
    if isinstance(exc, BleakBluetoothNotAvailableError):
        return f"Bluetooth is not available: {exc}"
    if isinstance(exc, BleakError):
        text = str(exc)
        if "not found" in text and "adapter" in text:
            return f"adapter {adapter} not found (bluetoothctl list shows the adapters)"
        if "passive" in text:
            return f"passive scanning is not supported here ({text}); set scanning: active"
        return f"scanning on {adapter} failed: {text}"
    if isinstance(exc, OSError):
        return (
            f"no D-Bus system bus ({exc.strerror or exc}): is dbus running, and may fieldgate "
            "reach /run/dbus/system_bus_socket?"
        )
    return f"scanning on {adapter} failed: {type(exc).__name__}: {exc}"


class BleAdapter:
    """One Bluetooth adapter as a bus: a streaming driver for its advertisers and the polled
    GATT devices. Entering it does nothing: scanning starts in :meth:`stream`."""

    def __init__(
        self, bus: BleBusSettings, devices: Sequence[BleDeviceSettings], clock: Clock
    ) -> None:
        self._bus = bus
        self._clock = clock
        self._budget = ConnectionBudget(bus.max_connections)
        started = clock.monotonic()
        self._advertisers = [
            _Advertiser(d, SensorSampler(d.interval, d.sampling, d.stale_after, started), d.address)
            for d in devices
            if not d.is_gatt
        ]
        self._by_address = {a.address: a for a in self._advertisers if a.address is not None}
        self._by_pattern = [a for a in self._advertisers if a.address is None]
        self._gatt_addresses = {d.address for d in devices if d.is_gatt and d.address}
        self._seen: dict[str, BLEDevice] = {}
        self._gatt = [
            GattDevice(
                d,
                bus.adapter,
                self._budget,
                self._seen.get,
                lambda: self._scanning,
                clock,
                bus.connect_timeout,
                passive=bus.scanning is ScanningMode.PASSIVE,
            )
            for d in devices
            if d.is_gatt
        ]
        stale = [a.config.stale_after for a in self._advertisers]
        self._silence_limit = min(stale) if stale else _SILENCE_DEFAULT
        self._tick = max(0.05, min([0.5, *(a.config.interval / 4 for a in self._advertisers)]))
        self._sink: ReadingSink | None = None
        self._scanning = False
        self._last_advert = started
        self._trouble: str | None = None
        #: Advertisements of configured sensors: heard, decoded into values, rejected (not
        #: decodable, a repeat, or a bind key that does not open them).
        self.heard = 0
        self.decoded = 0
        self.rejected = 0
        #: Advertisements our own code failed on (a bug): counted as rejected, logged once.
        self.faults = 0

    @property
    def devices(self) -> Sequence[GattDevice]:
        return self._gatt

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def line_counts(self) -> LineCounts:
        return LineCounts(
            requests=self.heard,
            answers=self.decoded,
            malformed=self.rejected,
            timeouts=self._budget.timeouts,
            connects=self._budget.connects,
        )

    async def stream(self, sink: ReadingSink) -> None:
        self._sink = sink
        for logger in _CHATTY_LOGGERS:
            logging.getLogger(logger).setLevel(logging.CRITICAL)
        await self.open_decoders(sink)
        backoff = Backoff(base=1.0, cap=self._bus.retry_max)
        while True:
            try:
                scanner = await self._start_scanner()
            except AdapterTrouble as trouble:
                self._report_trouble(str(trouble), sink)
                await self._clock.sleep(backoff.failed(self._clock.monotonic()))
                continue
            if self._trouble is not None:
                log.info("scanning on %s again (after: %s)", self._bus.adapter, self._trouble)
                self._trouble = None
            backoff.succeeded()
            try:
                await self._listen(sink)
            finally:
                await self._stop_scanner(scanner)

    async def open_decoders(self, sink: ReadingSink) -> None:
        """Read the bind keys and make each sensor's decoder. :meth:`stream` does this first;
        whoever feeds :meth:`on_advert` without it (a benchmark) calls it."""
        self._sink = sink
        for advertiser in self._advertisers:
            if advertiser.decoder is not None:
                continue
            try:
                # The key file is read off the event loop.
                key = await asyncio.to_thread(bind_key_of, advertiser.config)
            except DeviceError as exc:
                sink.device_failed(advertiser.config.name, exc)
                continue
            advertiser.decoder = AdvertDecoder(advertiser.config.advert_format, key)

    async def _start_scanner(self) -> BleakScanner:
        bluez: BlueZScannerArgs = {"adapter": self._bus.adapter}
        passive = self._bus.scanning is ScanningMode.PASSIVE
        if passive:
            bluez["or_patterns"] = PASSIVE_PATTERNS
        try:
            scanner = BleakScanner(
                detection_callback=self.on_advert,
                scanning_mode="passive" if passive else "active",
                bluez=bluez,
            )
            await scanner.start()
        except (BleakError, OSError, EOFError) as exc:
            raise AdapterTrouble(describe_trouble(exc, self._bus)) from exc
        self._scanning = True
        now = self._last_advert = self._clock.monotonic()
        for advertiser in self._advertisers:
            advertiser.sampler.scan_started(now)
        return scanner

    async def _stop_scanner(self, scanner: BleakScanner) -> None:
        self._scanning = False
        with contextlib.suppress(BleakError, OSError, EOFError, TimeoutError):
            async with asyncio.timeout(_STOP_TIMEOUT):
                await scanner.stop()

    def _report_trouble(self, problem: str, sink: ReadingSink) -> None:
        if problem != self._trouble:
            log.warning(
                "BLE bus %s: %s; its sensors are reported failed and scanning is retried "
                "(logged again only if the trouble changes)",
                self._bus.name,
                problem,
            )
            self._trouble = problem
        names = [a.config.name for a in self._advertisers] + [g.name for g in self._gatt]
        for name in names:
            sink.device_failed(name, DeviceUnreachable(problem))

    async def _listen(self, sink: ReadingSink) -> None:
        """Take readings and notice missing sensors until the scan falls silent."""
        while True:
            await self._clock.sleep(self._tick)
            now = self._clock.monotonic()
            for advertiser in self._advertisers:
                sample = advertiser.sampler.take(now)
                if sample is not None:
                    await sink.submit(
                        reading_from_values(
                            advertiser.config.name, sample.read_at_ms, sample.values
                        )
                    )
                if advertiser.sampler.went_missing(now):
                    sink.device_failed(advertiser.config.name, self._missing(advertiser))
            if now - self._last_advert >= self._silence_limit:
                log.debug(
                    "nothing heard on %s for %.0fs; restarting the scan",
                    self._bus.adapter,
                    now - self._last_advert,
                )
                return

    def _missing(self, advertiser: _Advertiser) -> DeviceError:
        limit = format_duration(advertiser.config.stale_after)
        where = advertiser.address or f"name {advertiser.config.name_pattern!r}"
        if not advertiser.sampler.heard_ever:
            return DeviceTimeout(f"{where} not heard since the scan started ({limit} ago)")
        return DeviceTimeout(f"{where} not heard for {limit} (stale_after)")

    def on_advert(self, device: BLEDevice, data: AdvertisementData) -> None:
        """bleak's detection callback: never lets an exception out into bleak."""
        try:
            self._advert(device, data)
        except Exception:
            self.rejected += 1
            if self.faults == 0:
                log.exception(
                    "BLE bus %s: an advertisement could not be handled (a bug; logged once)",
                    self._bus.name,
                )
            self.faults += 1

    def _advert(self, device: BLEDevice, data: AdvertisementData) -> None:
        now = self._clock.monotonic()
        self._last_advert = now
        address = device.address.upper()
        if address in self._gatt_addresses:
            self._seen[address] = device
        advertiser = self._match(address, data.local_name)
        if advertiser is None or advertiser.decoder is None:
            return
        self.heard += 1
        outcome = advertiser.decoder.decode(advert_from(device, data, now))
        if isinstance(outcome, Decoded):
            self.decoded += 1
            advertiser.key_reported = False
            self._identify(advertiser, address, outcome)
            values = [PointValue(m.name, m.value, m.unit) for m in outcome.measurements]
            values.append(PointValue(_RSSI.name, data.rssi, _RSSI.unit))
            wall_ms = round(self._clock.wall() * 1000)
            advertiser.sampler.add(values, now, wall_ms)
            return
        self.rejected += 1
        advertiser.rejected[outcome.reason] = advertiser.rejected.get(outcome.reason, 0) + 1
        if outcome.reason is Rejection.NOTHING_NEW:
            advertiser.sampler.heard(now)
        elif outcome.reason is Rejection.KEY and not advertiser.key_reported and self._sink:
            advertiser.key_reported = True
            self._sink.device_failed(advertiser.config.name, DeviceProtocolError(outcome.detail))

    def _identify(self, advertiser: _Advertiser, address: str, outcome: Decoded) -> None:
        """Tell the sink (and the log, the first time) what the sensor is, when its decoded
        advert says something new: its first, a value of a kind not seen before, a model."""
        said = (outcome.manufacturer, outcome.model, outcome.device_name)
        if said == advertiser.said and all(
            m.name in advertiser.point_names for m in outcome.measurements
        ):
            return  # the common case, on every advertisement: nothing made, nothing told
        advertiser.said = said
        known = advertiser.identity
        points = {p.name: p for p in known.points} if known is not None else {_RSSI.name: _RSSI}
        for m in outcome.measurements:
            if m.name not in points:
                points[m.name] = PointInfo(m.name, m.unit, device_class=m.device_class)
        before = known or DeviceIdentity()
        identity = DeviceIdentity(
            manufacturer=outcome.manufacturer or before.manufacturer,
            model=outcome.model or before.model,
            device_name=outcome.device_name or before.device_name,
            points=tuple(points.values()),
        )
        if identity == known:
            return
        advertiser.identity = identity
        advertiser.point_names = frozenset(points)
        if known is None:
            what = " ".join(p for p in (identity.manufacturer, identity.model) if p)
            log.info(
                "%s (%s): %s, format %s",
                advertiser.config.name,
                address,
                what or identity.device_name or "a sensor",
                outcome.format.value,
            )
        if self._sink is not None:
            self._sink.describe(advertiser.config.name, identity)

    def _match(self, address: str, name: str | None) -> _Advertiser | None:
        advertiser = self._by_address.get(address)
        if advertiser is not None or not self._by_pattern or not name:
            return advertiser
        for candidate in self._by_pattern:
            pattern = candidate.config.name_pattern or ""
            if fnmatch.fnmatchcase(name, pattern):
                candidate.address = address
                self._by_pattern.remove(candidate)
                self._by_address[address] = candidate
                log.info("%s: %s (%s) matches %r", candidate.config.name, address, name, pattern)
                return candidate
        return None


def open_ble_bus(
    bus: BleBusSettings, devices: Sequence[BleDeviceSettings], clock: Clock
) -> BleAdapter:
    return BleAdapter(bus, devices, clock)
