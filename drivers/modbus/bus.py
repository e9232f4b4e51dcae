"""A Modbus bus: one line (:class:`~drivers.modbus.link.ModbusLink`) shared by the slaves behind
it, used one transaction at a time, with a circuit breaker per slave so that one dead meter
cannot stall the others. Transport-independent: TCP, RTU and RTU-over-TCP differ only in the link
they build (see :mod:`.tcp`, :mod:`.rtu`)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from drivers.modbus.decode import BlockDecoder, NotEncodable, decode_point, encode_point
from drivers.modbus.link import MalformedAnswer, ModbusExceptionError, ModbusLink
from drivers.modbus.pdu import (
    FunctionCode,
    Request,
    bits_of,
    read_request,
    registers_of,
    write_coil_request,
    write_coils_request,
    write_register_request,
    write_registers_request,
)
from drivers.modbus.plan import ReadRequest, plan_requests
from drivers.modbus.settings import (
    MAX_REGISTERS_PER_READ,
    ModbusDeviceSettings,
    ModbusPointSettings,
    RegisterType,
)
from gateway.backoff import Backoff
from gateway.clock import Clock, epoch_ms
from gateway.driver import LineCounts, SlaveCounts
from gateway.errors import DeviceError, DeviceProtocolError, DeviceTimeout, WriteRefused
from gateway.readings import PointValue, Reading, reading_from_values

log = logging.getLogger(__name__)

#: Modbus exception codes, for error messages a technician can act on.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_ILLEGAL_ADDRESS = 2
#: Acknowledge and busy: the device asks to be asked again shortly.
_ASK_AGAIN = frozenset({5, 6})
#: Seconds after which points (and gaps) a meter refused are asked for again.
ASK_REFUSED_AGAIN_AFTER = 3600.0
_ASK_AGAIN_TRIES = 2
_ASK_AGAIN_DELAY = 0.05
_READS = frozenset(
    {
        FunctionCode.READ_COILS,
        FunctionCode.READ_DISCRETE_INPUTS,
        FunctionCode.READ_HOLDING_REGISTERS,
        FunctionCode.READ_INPUT_REGISTERS,
    }
)

FUNCTION_CODE_OF: dict[RegisterType, FunctionCode] = {
    RegisterType.COIL: FunctionCode.READ_COILS,
    RegisterType.DISCRETE_INPUT: FunctionCode.READ_DISCRETE_INPUTS,
    RegisterType.HOLDING: FunctionCode.READ_HOLDING_REGISTERS,
    RegisterType.INPUT: FunctionCode.READ_INPUT_REGISTERS,
}


@dataclass(slots=True)
class SlaveState:
    """The circuit breaker and counters of one unit id on a bus, shared by every device config
    that names it. After a timeout the request is retried once; if that times out too the slave
    is backed off (capped, jittered) and polls inside the window fail at once without touching
    the line; after the window one request is tried, without retry."""

    backoff: Backoff
    requests: int = 0
    timeouts: int = 0
    skipped_polls: int = 0
    malformed: int = 0
    in_malformed_episode: bool = False
    counters: dict[str, int] = field(default_factory=dict)


class ModbusBus:
    """The line and the slaves on it. Devices are read one at a time: a Modbus line (and most
    TCP gateways in front of one) handles one transaction at a time."""

    def __init__(
        self,
        link: ModbusLink,
        devices: Sequence[ModbusDeviceSettings],
        clock: Clock,
        *,
        slave_backoff_base: float = 1.0,
        slave_backoff_max: float = 60.0,
        rand: Callable[[], float] | None = None,
    ) -> None:
        self.link = link
        self._clock = clock
        self._lock = asyncio.Lock()
        self.slaves: dict[int, SlaveState] = {}
        for device in devices:
            if device.unit_id not in self.slaves:
                backoff = (
                    Backoff(slave_backoff_base, slave_backoff_max)
                    if rand is None
                    else Backoff(slave_backoff_base, slave_backoff_max, rand)
                )
                self.slaves[device.unit_id] = SlaveState(backoff)
        self._devices = [ModbusPolledDevice(self, device) for device in devices]

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def describe(self) -> str:
        return self.link.describe

    @property
    def devices(self) -> Sequence[ModbusPolledDevice]:
        return self._devices

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.link.close()

    def line_counts(self) -> LineCounts:
        """The line's counters and each unit's, with its breaker state (the core's health
        reads them; :class:`gateway.driver.CountingBusDriver`)."""
        line = self.link.counters
        now = self._clock.monotonic()
        slaves = {
            unit: SlaveCounts(
                requests=slave.requests,
                timeouts=slave.timeouts,
                errors=slave.malformed,
                skipped_polls=slave.skipped_polls,
                breaker=_breaker_state(slave, now),
            )
            for unit, slave in sorted(self.slaves.items())
        }
        return LineCounts(
            requests=line.transactions,
            answers=line.answers,
            timeouts=line.timeouts,
            crc_errors=line.crc_errors,
            malformed=line.malformed,
            late_answers=line.late_answers,
            exceptions=line.exceptions,
            connects=line.connects,
            closed_by_peer=line.closed_by_peer,
            slaves=slaves,
        )

    def _slave(self, unit: int) -> SlaveState:
        if unit not in self.slaves:
            self.slaves[unit] = SlaveState(Backoff(1.0, 60.0))
        return self.slaves[unit]

    async def read_points(
        self, device: ModbusPolledDevice
    ) -> tuple[list[PointValue], dict[str, str]]:
        """Read every point of ``device`` not known to be refused: values in the device's point
        order, and the reason for each value that is missing."""
        config = device.config
        slave = self._slave(config.unit_id)
        async with self._lock:
            self._check_breaker(slave, config.unit_id)
            probing = slave.backoff.failures > 0
            # In the device's point order; a point not read stays None.
            values: list[int | float | str | None] = [None] * len(device.names)
            answered = False
            missing: dict[str, str] = dict(device.refused)
            clean = True
            for request, pdu, decoder, positions in device.planned:
                try:
                    data = await self.transact(slave, config.unit_id, pdu, retry=not probing)
                except ModbusExceptionError as exc:
                    if exc.code == _ILLEGAL_ADDRESS:
                        split = await self._split_refused(device, slave, request, values, missing)
                        answered = answered or split
                    else:
                        missing.update((p.name, str(exc)) for p in request.points)
                    continue
                except MalformedAnswer as exc:
                    # Never a value: this block's points are missing this time, with the reason.
                    missing.update((p.name, str(exc)) for p in request.points)
                    clean = False
                    continue
                block = decoder.values(data) if decoder else _decode_block(request, data).values()
                for position, value in zip(positions, block, strict=True):
                    values[position] = value
                answered = True
            slave.backoff.succeeded()
            if clean:
                slave.in_malformed_episode = False
        if not answered and missing:
            raise DeviceProtocolError(
                f"unit {config.unit_id} on {self.describe}: no point could be read: "
                + "; ".join(f"{name}: {why}" for name, why in sorted(missing.items()))
            )
        return list(map(PointValue, device.names, values, device.units)), missing

    async def _split_refused(
        self,
        device: ModbusPolledDevice,
        slave: SlaveState,
        request: ReadRequest,
        values: list[int | float | str | None],
        missing: dict[str, str],
    ) -> bool:
        """The device refused a block: read its points one by one, remember those it refuses
        (not asked again for ASK_REFUSED_AGAIN_AFTER) and keep the rest (in ``values``, at
        their place in the device's point order). Whether any point answered."""
        unit = device.config.unit_id
        answered = False
        for point in request.points:
            single = ReadRequest(
                request.register_type, point.address, point.register_count, (point,)
            )
            if len(request.points) > 1:
                try:
                    data = await self.transact(slave, unit, _read_pdu(single), retry=True)
                except ModbusExceptionError as exc:
                    if exc.code != _ILLEGAL_ADDRESS:
                        missing[point.name] = str(exc)
                        continue
                except MalformedAnswer as exc:
                    missing[point.name] = str(exc)
                    continue
                else:
                    values[device.position[point.name]] = _decode_block(single, data)[point.name]
                    answered = True
                    continue
            last = point.address + point.register_count - 1
            reason = (
                f"{request.register_type} {point.address}..{last}: refused by the meter, "
                "exception 2 (illegal data address)"
            )
            missing[point.name] = reason
            device.refuse(point, reason)
        if answered and request.count > sum(p.register_count for p in request.points):
            # Its points answer one by one: what the meter refused was the unused registers
            # the block read across. Read this device without gaps from now on.
            device.forbid_gaps()
        return answered

    def _check_breaker(self, slave: SlaveState, unit: int) -> None:
        now = self._clock.monotonic()
        if slave.backoff.failures and not slave.backoff.may_attempt(now):
            slave.skipped_polls += 1
            wait = slave.backoff.next_attempt_at - now
            raise DeviceTimeout(
                f"unit {unit} on {self.describe} is not answering; next attempt in {wait:.1f}s"
            )

    async def transact(self, slave: SlaveState, unit: int, pdu: Request, retry: bool) -> bytes:
        """One request through the slave's breaker: a timeout is retried once (``retry``),
        then the slave is backed off; busy/acknowledge is asked again shortly."""
        attempts = 2 if retry else 1
        busy = 0
        garbled = 0
        while True:
            try:
                slave.requests += 1
                return await self.link.transact(unit, pdu)
            except DeviceTimeout as exc:
                slave.timeouts += 1
                attempts -= 1
                if attempts > 0:
                    continue
                delay = slave.backoff.failed(self._clock.monotonic())
                raise DeviceTimeout(f"{exc}; next attempt in {delay:.1f}s") from None
            except ModbusExceptionError as exc:
                if exc.code in _ASK_AGAIN and busy < _ASK_AGAIN_TRIES:
                    busy += 1
                    await asyncio.sleep(_ASK_AGAIN_DELAY * busy)
                    continue
                name = EXCEPTION_NAMES.get(exc.code, "unknown exception")
                raise ModbusExceptionError(
                    f"{describe_request(pdu)} of unit {unit} on {self.describe}: "
                    f"exception {exc.code} ({name})",
                    exc.code,
                ) from None
            except MalformedAnswer as exc:
                slave.malformed += 1
                if not slave.in_malformed_episode:
                    slave.in_malformed_episode = True
                    log.warning("%s (logged once until the unit answers well again)", exc)
                # A frame hit by line noise is asked for once more (reads are idempotent; a
                # write is not repeated): 1 % CRC errors then cost 0.01 % of the polls.
                if garbled == 0 and pdu.function_code in _READS:
                    garbled += 1
                    continue
                raise

    async def read_block(
        self, unit: int, request: ReadRequest
    ) -> dict[str, int | float | str | None]:
        """One planned request of ``unit``, decoded (a remote command's read of one point)."""
        slave = self._slave(unit)
        async with self._lock:
            data = await self.transact(slave, unit, _read_pdu(request), retry=True)
        return _decode_block(request, data)

    async def write(self, unit: int, pdu: Request, read_back: Request, expect: bytes) -> None:
        """Write, then read the written range back and compare: a device that acknowledges a
        write but keeps the old value (a read-only register, a locked setting) is an error."""
        slave = self._slave(unit)
        async with self._lock:
            await self.transact(slave, unit, pdu, retry=False)
            got = await self.transact(slave, unit, read_back, retry=True)
        if got != expect:
            raise DeviceProtocolError(
                f"{describe_request(pdu)} of unit {unit} on {self.describe}: acknowledged, "
                "but reading it back gives another value"
            )


def _breaker_state(slave: SlaveState, now: float) -> str:
    if not slave.backoff.failures:
        return "closed"
    return "half_open" if slave.backoff.may_attempt(now) else "open"


def describe_request(request: Request) -> str:
    last = request.address + request.count - 1
    return f"{request.function_code.name.lower()} {request.address}..{last}"


def _decode_block(request: ReadRequest, data: bytes) -> dict[str, int | float | str | None]:
    if request.register_type in {RegisterType.COIL, RegisterType.DISCRETE_INPUT}:
        bits = bits_of(data, request.count)
        return {
            p.name: decode_point(p, bits[p.address - request.address :]) for p in request.points
        }
    registers = registers_of(data)
    return {p.name: decode_point(p, request.registers_of(p, registers)) for p in request.points}


def _read_pdu(request: ReadRequest) -> Request:
    return read_request(FUNCTION_CODE_OF[request.register_type], request.address, request.count)


#: A planned read: the request, its PDU, the decoder of its answer (None for bit tables) and
#: where its points go in the device's point order.
Planned = tuple[ReadRequest, Request, BlockDecoder | None, tuple[int, ...]]


def _with_decoders(requests: Sequence[ReadRequest], position: Mapping[str, int]) -> list[Planned]:
    """Each planned read with what a poll needs to send it and place its values, built once
    per plan rather than on every poll."""
    return [
        (
            request,
            _read_pdu(request),
            None
            if request.register_type in {RegisterType.COIL, RegisterType.DISCRETE_INPUT}
            else BlockDecoder(request.address, request.points),
            tuple(position[point.name] for point in request.points),
        )
        for request in requests
    ]


class ModbusPolledDevice:
    """One Modbus device, with its read requests planned once at start (and again when the
    meter refuses part of them)."""

    def __init__(self, bus: ModbusBus, config: ModbusDeviceSettings) -> None:
        self._bus = bus
        self.config = config
        self.refused: dict[str, str] = {}
        #: When (monotonic) the meter first refused a point since they were last asked again.
        self._refused_since: float | None = None
        self._gaps_allowed = True
        #: Names and units of the points in the config's order (the reading's order), and
        #: where each name is in it. Interned: meters configured alike (points listed in each
        #: device, not from a template) then share one string per name and unit, which every
        #: reading's values refer to and the uplink hashes and encodes, instead of a copy per
        #: device for the cache to miss.
        self.names = tuple(sys.intern(point.name) for point in config.points)
        self.units = tuple(
            None if point.unit is None else sys.intern(point.unit) for point in config.points
        )
        self.position = {name: index for index, name in enumerate(self.names)}
        self._requests: list[ReadRequest] = []
        self.planned: list[Planned] = []
        self._replan()
        #: Why each missing value of the last reading is missing (``fieldgate read`` shows it).
        self.last_missing: dict[str, str] = {}

    def _replan(self) -> None:
        self._requests = self._plan()
        self.planned = _with_decoders(self._requests, self.position)

    def _plan(self) -> list[ReadRequest]:
        wanted = [p for p in self.config.points if p.name not in self.refused]
        refused = {
            (p.register_type, address)
            for p in self.config.points
            if p.name in self.refused
            for address in range(p.address, p.address + p.register_count)
        }
        # Without a max_gap from the config or its template, read across unused registers
        # (up to a whole request) and learn what this meter refuses: a refused block is split
        # (see ModbusBus._split_refused), its refused points are never read across, and a
        # meter that refuses the gaps themselves is read without gaps from then on. On a
        # serial line a gap is read across only where that saves wire time.
        learning = self.config.learn_max_gap
        max_gap = MAX_REGISTERS_PER_READ if learning else self.config.max_gap
        worth = self._bus.link.gap_worth_registers
        if worth is not None:
            max_gap = min(max_gap, worth)
        if not self._gaps_allowed:
            max_gap = 0
        return plan_requests(
            wanted, max_gap=max_gap, max_registers=self.config.max_block, avoid=refused
        )

    def refuse(self, point: ModbusPointSettings, reason: str) -> None:
        self.refused[point.name] = reason
        if self._refused_since is None:
            self._refused_since = self._bus.clock.monotonic()
        self._replan()

    def forbid_gaps(self) -> None:
        self._gaps_allowed = False
        if self._refused_since is None:
            self._refused_since = self._bus.clock.monotonic()
        self._replan()

    def _ask_refused_again_if_due(self) -> None:
        """After ``ASK_REFUSED_AGAIN_AFTER`` a meter's refusals are forgotten and the original
        plan is tried again: a meter reconfigured or updated may answer them now (if not, they
        are split off again, at the cost of a few requests once per window)."""
        since = self._refused_since
        if since is None or self._bus.clock.monotonic() - since < ASK_REFUSED_AGAIN_AFTER:
            return
        log.info(
            "%s: asking again for what unit %d refused (%s)",
            self.config.name,
            self.config.unit_id,
            ", ".join(sorted(self.refused)) or "a gap between points",
        )
        self.refused.clear()
        self._gaps_allowed = True
        self._refused_since = None
        self._replan()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def requests(self) -> Sequence[ReadRequest]:
        return self._requests

    async def read(self) -> Reading:
        self._ask_refused_again_if_due()
        values, self.last_missing = await self._bus.read_points(self)
        # When the last answer arrived: no value of the reading is newer than its time.
        return reading_from_values(self.config.name, epoch_ms(self._bus.clock), tuple(values))

    # -- writes (remote commands, for points the config marks writable) ----------------------

    async def write(self, point: str, value: float) -> float | int | str | None:
        """:class:`gateway.driver.WritableDevice`: the point's registers (or coil) set to
        ``value``, read back and compared, then read again as a reading decodes it."""
        config = next((p for p in self.config.points if p.name == point), None)
        if config is None or not config.writable:
            raise WriteRefused(f"{self.config.name}: point {point!r} is not writable")
        if config.min is None or config.max is None or not config.min <= value <= config.max:
            raise WriteRefused(
                f"{self.config.name}: {value!r} is outside {point}'s limits "
                f"{config.min:g}..{config.max:g}"
            )
        try:
            words = encode_point(config, value)
        except NotEncodable as exc:
            raise WriteRefused(f"{self.config.name}: {exc}") from exc
        if config.register_type is RegisterType.COIL:
            await self.write_coils(config.address, [bool(word) for word in words])
        else:
            await self.write_registers(config.address, [int(word) for word in words])
        return await self._read_point(config)

    async def _read_point(self, point: ModbusPointSettings) -> float | int | str | None:
        (request,) = plan_requests([point], max_gap=0, max_registers=self.config.max_block)
        return (await self._bus.read_block(self.config.unit_id, request))[point.name]

    async def write_coil(self, address: int, value: bool) -> None:
        await self.write_coils(address, [value])

    async def write_coils(self, address: int, values: Sequence[bool]) -> None:
        pdu = (
            write_coil_request(address, values[0])
            if len(values) == 1
            else write_coils_request(address, values)
        )
        read_back = read_request(FunctionCode.READ_COILS, address, len(values))
        packed = bytearray((len(values) + 7) // 8)
        for index, value in enumerate(values):
            if value:
                packed[index // 8] |= 1 << (index % 8)
        await self._bus.write(self.config.unit_id, pdu, read_back, bytes(packed))

    async def write_registers(self, address: int, values: Sequence[int]) -> None:
        pdu = (
            write_register_request(address, values[0])
            if len(values) == 1
            else write_registers_request(address, values)
        )
        read_back = read_request(FunctionCode.READ_HOLDING_REGISTERS, address, len(values))
        expect = b"".join(v.to_bytes(2, "big") for v in values)
        await self._bus.write(self.config.unit_id, pdu, read_back, expect)


__all__ = ["DeviceError", "ModbusBus", "ModbusPolledDevice", "SlaveState"]
