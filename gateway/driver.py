"""The seam between the core and the drivers: the only driver API the core knows.

A *bus driver* owns one field bus (a TCP endpoint, a serial line, a BLE adapter) and the one
connection to it. It is an async context manager: entering it must not fail because a device is
down (connections are made lazily and re-made on demand), leaving it closes the connection.
Through it the core gets one :class:`PolledDevice` per configured device, whose ``read()`` polls
the device now and returns a :class:`~gateway.readings.Reading` or raises a
:class:`~gateway.errors.DeviceError`. Drivers translate their library's exceptions into that tree
at their edge; they never return ``None`` to mean failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from gateway.readings import Reading

if TYPE_CHECKING:
    from gateway.clock import Clock


class PolledDevice(Protocol):
    """One device that is read on demand."""

    @property
    def name(self) -> str: ...

    async def read(self) -> Reading:
        """Poll the device now. Raises :class:`gateway.errors.DeviceError` on failure."""
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


#: Builds a bus driver from the bus's config model, the config models of its devices and the
#: clock that stamps readings. Config models are typed by each driver; the core passes them
#: through untouched.
BusDriverFactory = Callable[[Any, Sequence[Any], "Clock"], BusDriver]
