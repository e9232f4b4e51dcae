"""One Modbus line (a TCP connection, or a serial port) and one transaction at a time on it.

fieldgate frames and matches answers itself instead of using pymodbus's client, whose transaction
layer takes an answer with another function code, takes transaction id 0 for whatever request is
waiting, raises inside ``data_received`` on some malformed frames (asyncio then prints a
traceback per frame) and notices a closed connection only when the read times out. Here:

- every answer is checked against its request (:func:`drivers.modbus.pdu.check_answer`): unit
  id, function code, byte count, length;
- a late answer to an abandoned request is recognised and dropped (TCP: by its transaction id;
  RTU: by its unit id or function code, and the line is quiet for 3.5 characters before each
  request, so leftovers are discarded) and never taken for the next request's;
- a timeout costs that request, not the connection other unit ids share;
- the peer closing or resetting the connection fails the waiting request at once;
- nothing raises out of ``data_received``: bytes are only collected there.

The transport is opened by an ``opener`` (TCP: the event loop's ``create_connection``; RTU on a
serial port: pymodbus's pyserial-backed asyncio transport), re-opened on demand with capped,
jittered backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from drivers.modbus.pdu import (
    MAX_RTU_FRAME,
    AnswerMismatch,
    ExceptionAnswer,
    Frame,
    FrameError,
    Request,
    check_answer,
    mbap_frame,
    rtu_frame,
    take_mbap,
    take_rtu,
)
from gateway.backoff import Backoff
from gateway.clock import Clock
from gateway.errors import DeviceProtocolError, DeviceTimeout, DeviceUnreachable

log = logging.getLogger(__name__)


class Framing(Enum):
    MBAP = "mbap"  # Modbus TCP
    RTU = "rtu"  # RTU on a serial line, or tunnelled over TCP


class ModbusExceptionError(DeviceProtocolError):
    """The device answered the request with a Modbus exception code."""

    def __init__(self, message: str, code: int) -> None:
        self.code = code
        super().__init__(message)


class MalformedAnswer(DeviceProtocolError):
    """Bytes came back that are not a valid answer to the request (CRC, framing, function
    code, unit id, byte count)."""


@dataclass(slots=True)
class LineCounters:
    """What happened on one line since it was opened; read by tests, bench and the CLI."""

    transactions: int = 0
    answers: int = 0
    timeouts: int = 0
    late_answers: int = 0
    crc_errors: int = 0
    malformed: int = 0
    connects: int = 0
    closed_by_peer: int = 0
    exceptions: int = 0


class _Wire(asyncio.Protocol):
    """Collects bytes and notices the end of the connection; never raises."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed: str | None = None
        self.last_rx = 0.0
        self.loop = asyncio.get_running_loop()
        #: The transaction waiting for bytes or the end of the connection, if one is, and
        #: until when (loop time) it waits.
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0
        #: The one timer of this connection, and when it fires: at or before the deadline of
        #: the wait in progress (see changed()).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        # A flood of garbage must not grow without bound; what is cut is garbage anyway.
        if len(self.buffer) > 4 * MAX_RTU_FRAME:
            del self.buffer[:-MAX_RTU_FRAME]
        self.last_rx = self.loop.time()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = "the peer closed the connection"
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is None:
            self.closed = f"connection lost ({exc})" if exc else "the connection was closed"
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def changed(self, deadline: float) -> None:
        """Return once bytes arrive or the connection ends, or at ``deadline`` (loop time).
        One future a wait, made on the loop this wire belongs to: a poll of a meter waits here
        once per request, so asyncio.timeout and an Event (which look the running loop up
        again, a getpid() system call each time) cost too much here. The timer outlives the
        wait: one armed for an earlier deadline is kept (when it fires, it is armed again for
        the wait then in progress), so a poll's requests, whose answers come long before the
        timeout, cost no timer each (a timer made and cancelled is a heap push and pop)."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        self._deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no wait in progress: the next one arms its own
        if self._deadline > self._timer_at:
            # Armed for an earlier wait; this one ends later.
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        waiter.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None:
            _wake(self._waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


#: Opens the transport with the given protocol factory (``loop.create_connection``'s shape).
Opener = Callable[[Callable[[], _Wire]], Awaitable[tuple[asyncio.BaseTransport, _Wire]]]


class ModbusLink:
    """One transport, one transaction at a time."""

    def __init__(
        self,
        describe: str,
        opener: Opener,
        framing: Framing,
        clock: Clock,
        *,
        timeout: float,
        reconnect_max: float,
        char_time: float = 0.0,
        silence: float = 0.0,
        turnaround: float = 0.0,
    ) -> None:
        self.describe = describe
        self.counters = LineCounters()
        self._opener = opener
        self._framing = framing
        self._clock = clock
        self._timeout = timeout
        #: Seconds one character takes on the wire (0 for TCP): the wait for an answer starts
        #: once the request has left and includes the answer's own time on the wire.
        self._char_time = char_time
        self._gap = max(silence, turnaround)
        self._backoff = Backoff(base=0.5, cap=reconnect_max)
        self._lock = asyncio.Lock()
        self._transport: asyncio.BaseTransport | None = None
        self._wire: _Wire | None = None
        self._transaction_id = 0
        #: (unit, function code) of the last request abandoned on a timeout (RTU), whose
        #: answer may still arrive while the next request waits.
        self._abandoned: tuple[int, int] | None = None
        self._last_tx_end = 0.0

    @property
    def gap_worth_registers(self) -> int | None:
        """How many unused registers a read may span before that costs more wire time than a
        second transaction (request, answer header and CRC, two 3.5-character silences and the
        turnaround: ~20 characters, 2 per register). ``None`` on TCP, where a transaction's
        cost is a round trip, not bytes."""
        if self._char_time <= 0:
            return None
        overhead_chars = 8 + 5 + 7 + self._gap / self._char_time
        return int(overhead_chars // 2)

    async def transact(self, unit: int, request: Request) -> bytes:
        """Send ``request`` to ``unit`` and return the data of its answer (see
        :func:`~drivers.modbus.pdu.check_answer`). Raises :class:`DeviceTimeout`,
        :class:`DeviceUnreachable`, :class:`ModbusExceptionError` or :class:`MalformedAnswer`."""
        async with self._lock:
            wire = await self._connected()
            loop = wire.loop
            if self._framing is Framing.RTU:
                await self._quiet(wire, loop)
                frame = rtu_frame(unit, request.pdu)
            else:
                # Never 0: some devices answer with transaction id 0, which must not match.
                self._transaction_id = self._transaction_id % 0xFFFF + 1
                frame = mbap_frame(self._transaction_id, unit, request.pdu)
            assert self._transport is not None
            self._transport.write(frame)  # type: ignore[attr-defined]
            self.counters.transactions += 1
            sent_at = loop.time()
            # The answer's own wire time: the longest answer a read of this size can have.
            answer_bytes = 5 + 2 * request.count
            deadline = sent_at + self._timeout + (len(frame) + answer_bytes) * self._char_time
            self._last_tx_end = sent_at + len(frame) * self._char_time
            return await self._answer(wire, unit, request, deadline, loop)

    async def _answer(
        self,
        wire: _Wire,
        unit: int,
        request: Request,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> bytes:
        while True:
            frame = self._take(wire, unit)
            if frame is None:
                if wire.closed is not None:
                    reason = wire.closed
                    self.counters.closed_by_peer += 1
                    self._drop()
                    raise DeviceUnreachable(f"{self.describe}: {reason}")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self.counters.timeouts += 1
                    self._abandoned = (unit, request.function_code)
                    if wire.buffer and self._framing is Framing.MBAP:
                        # Part of a frame: the stream cannot be resynchronised past it.
                        self.counters.malformed += 1
                        self._drop()
                    raise DeviceTimeout(
                        f"{self.describe}: unit {unit}: no valid answer within the timeout "
                        f"({self._timeout:g}s)"
                    )
                await wire.changed(deadline)
                continue
            if self._is_late(frame, unit, request):
                self.counters.late_answers += 1
                log.debug("%s: dropped a late or foreign answer from unit %d", self.describe, unit)
                continue
            if frame.unit != unit:
                self.counters.malformed += 1
                raise MalformedAnswer(
                    f"{self.describe}: answer from unit {frame.unit} to a request to unit {unit}"
                )
            try:
                data = check_answer(request, frame.pdu)
            except ExceptionAnswer as exc:
                self.counters.answers += 1
                self.counters.exceptions += 1
                raise ModbusExceptionError(
                    f"{self.describe}: unit {unit}: exception {exc.code}", exc.code
                ) from None
            except AnswerMismatch as exc:
                self.counters.malformed += 1
                raise MalformedAnswer(f"{self.describe}: unit {unit}: {exc}") from None
            self.counters.answers += 1
            self._abandoned = None
            return data

    def _take(self, wire: _Wire, unit: int) -> Frame | None:
        """The next complete frame in the receive buffer, or ``None``. Garbage fails the
        request (a protocol error), never the loop."""
        try:
            if self._framing is Framing.RTU:
                frame, used = take_rtu(wire.buffer)
            else:
                frame, used = take_mbap(wire.buffer)
        except FrameError as exc:
            is_crc = self._framing is Framing.RTU
            if is_crc:
                self.counters.crc_errors += 1
            else:
                self.counters.malformed += 1
            wire.buffer.clear()
            if self._framing is Framing.MBAP:
                # A TCP stream cannot be resynchronised past a bad header: start afresh.
                self._drop()
            raise MalformedAnswer(f"{self.describe}: unit {unit}: {exc}") from None
        except AnswerMismatch as exc:
            self.counters.malformed += 1
            wire.buffer.clear()
            raise MalformedAnswer(f"{self.describe}: unit {unit}: {exc}") from None
        if frame is not None:
            del wire.buffer[:used]
        return frame

    def _is_late(self, frame: Frame, unit: int, request: Request) -> bool:
        if self._framing is Framing.MBAP:
            return frame.transaction_id != self._transaction_id
        if frame.unit != unit:
            # On RTU only one request is ever outstanding: another unit's frame is the late
            # answer to an abandoned request (or another master's traffic).
            return True
        code = frame.pdu[0] & 0x7F if frame.pdu else -1
        return self._abandoned == (unit, code) and code != request.function_code

    async def _quiet(self, wire: _Wire, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the line has been silent for the inter-frame gap (3.5 characters, or the
        turnaround delay), then drop whatever arrived: leftovers of a late or broken answer."""
        while True:
            since = loop.time() - max(wire.last_rx, self._last_tx_end)
            if since >= self._gap:
                break
            await asyncio.sleep(self._gap - since)
        if wire.buffer:
            self.counters.late_answers += 1
            wire.buffer.clear()

    async def _connected(self) -> _Wire:
        if self._wire is not None and self._wire.closed is None:
            return self._wire
        self._drop()
        now = self._clock.monotonic()
        if not self._backoff.may_attempt(now):
            wait = self._backoff.next_attempt_at - now
            raise DeviceUnreachable(f"{self.describe}: not connected; next attempt in {wait:.1f}s")
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                transport, wire = await self._opener(_Wire)
        except (OSError, TimeoutError, ValueError) as exc:
            delay = self._backoff.failed(self._clock.monotonic())
            raise DeviceUnreachable(
                f"{self.describe}: cannot connect ({exc}); next attempt in {delay:.1f}s"
            ) from None
        self._backoff.succeeded()
        self.counters.connects += 1
        self._transport, self._wire = transport, wire
        return wire

    def _drop(self) -> None:
        transport, self._transport, self._wire = self._transport, None, None
        if transport is not None:
            transport.close()

    def close(self) -> None:
        self._drop()
