"""The seam between the core and the drivers: the only driver API the core knows.

A *bus driver* owns one field bus (a TCP endpoint, a serial line, a BLE adapter) and the one
connection to it. It is an async context manager: entering it must not fail because a device is
down (connections are made lazily and re-made on demand), leaving it closes the connection.
Readings reach the core in one of two ways, and a bus may offer both:

- *polled*: the core's scheduler calls ``read()`` of each :class:`PolledDevice` in ``devices``
  on the device's interval; it returns a :class:`~gateway.readings.Reading` or raises a
  :class:`~gateway.errors.DeviceError`;
- *streaming* (:class:`StreamingBusDriver`): the device speaks when it wants (BLE
  advertisements, a meter that pushes, an M-Bus HAN port); the core runs ``stream(sink)`` as a
  task and the driver hands each reading to the :class:`ReadingSink`.

Drivers translate their library's exceptions into :mod:`gateway.errors` at their edge; they never
return ``None`` to mean failure. Anything else a driver raises is a bug: the core contains it to
that device (polled) or that bus's stream, logs it once and carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from gateway.errors import DeviceError
from gateway.readings import DeviceIdentity, Reading

if TYPE_CHECKING:
    from gateway.clock import Clock


class PolledDevice(Protocol):
    """One device that is read on demand."""

    @property
    def name(self) -> str: ...

    async def read(self) -> Reading:
        """Poll the device now. Raises :class:`gateway.errors.DeviceError` on failure."""
        ...


@runtime_checkable
class WritableDevice(Protocol):
    """Optional beside :class:`PolledDevice`: a device whose points remote commands may set.
    The core checks the config first (the point is ``writable``, the value within its
    ``min``..``max``); the driver checks again that it may, writes, reads the point back and
    compares."""

    async def write(self, point: str, value: float) -> float | int | str | None:
        """Set ``point`` to ``value`` and return the value the device reports afterwards.
        Raises :class:`gateway.errors.WriteRefused` when nothing was written (not writable,
        a value its registers cannot hold) and other :class:`DeviceError` subclasses when the
        write or the read-back failed (``DeviceProtocolError``: acknowledged, but the device
        reports another value)."""
        ...


class ReadingSink(Protocol):
    """Where every reading enters the core, whoever produced it (see :mod:`gateway.sink`)."""

    async def submit(self, reading: Reading) -> None:
        """Store ``reading`` durably before returning. Never raises for a storage failure: the
        core reports that itself; the driver just goes on."""
        ...

    def device_failed(self, device: str, error: DeviceError) -> None:
        """Report that ``device`` could not be heard from (a sensor that stopped advertising
        past its staleness limit): recorded in its health, logged once per outage."""
        ...

    def describe(self, device: str, identity: DeviceIdentity) -> None:
        """Report what ``device`` says of itself once heard (a BLE parser's model, name and
        the device class of each value), beside what its config says. Call it again when that
        changes (a value of a new kind was decoded), not with every reading: the fleet's
        retained description (and Home Assistant's discovery) is sent again before the
        device's next reading."""
        ...


class BusDriver(Protocol):
    """One field bus and the devices on it."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def devices(self) -> Sequence[PolledDevice]: ...


@runtime_checkable
class StreamingBusDriver(BusDriver, Protocol):
    """A bus whose devices push their readings."""

    async def stream(self, sink: ReadingSink) -> None:
        """Hand readings to ``sink`` as they arrive, until cancelled. Errors of one device are
        reported with ``sink.device_failed``; an exception that escapes ends this run, and the
        core logs it once and calls ``stream`` again after a backoff."""
        ...


@dataclass(frozen=True, slots=True)
class SlaveCounts:
    """What one unit on a line cost and got since the bus was opened."""

    requests: int = 0
    timeouts: int = 0
    #: Answers that were no valid answer: bad CRC, garbage, truncated, wrong function code.
    errors: int = 0
    #: Polls failed at once, without touching the line, while the unit's breaker was open.
    skipped_polls: int = 0
    #: "closed" (asked as usual), "open" (backed off: not asked until the window ends) or
    #: "half_open" (the window ended: the next poll tries once).
    breaker: str = "closed"


@dataclass(frozen=True, slots=True)
class LineCounts:
    """What happened on one line (a serial port, a TCP connection) since the bus was opened."""

    requests: int = 0
    answers: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    #: Frames that were no answer to the request: garbage, truncated, wrong unit or function.
    malformed: int = 0
    late_answers: int = 0
    exceptions: int = 0
    connects: int = 0
    closed_by_peer: int = 0
    slaves: Mapping[int, SlaveCounts] = field(default_factory=dict)


@runtime_checkable
class CountingBusDriver(Protocol):
    """Optional beside :class:`BusDriver`: a bus that counts what happens on its line. The core
    reads it when health is reported (a scrape, ``STATUS=``), never on the data path."""

    def line_counts(self) -> LineCounts:
        """A snapshot of the counters now; cheap, no I/O."""
        ...


#: Builds a bus driver from the bus's config model, the config models of its devices and the
#: clock that stamps readings. Config models are typed by each driver; the core passes them
#: through untouched.
BusDriverFactory = Callable[[Any, Sequence[Any], "Clock"], BusDriver]
