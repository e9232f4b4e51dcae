"""Drivers of a test's own, behind the real seam (gateway/driver.py): a bus that holds whatever
polled devices the test builds, and the lookup that `run_gateway(drivers=...)` takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from gateway.clock import Clock
from gateway.driver import BusDriverFactory, PolledDevice


class OwnBus:
    def __init__(self, devices: Sequence[PolledDevice]) -> None:
        self._devices = list(devices)

    @property
    def devices(self) -> Sequence[PolledDevice]:
        return self._devices

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


def own_drivers(
    make_bus: Callable[[Any, Sequence[Any], Clock], OwnBus],
) -> Callable[[str], BusDriverFactory]:
    """Every bus type opens through ``make_bus(bus_config, device_configs, clock)``."""

    def lookup(_bus_type: str) -> BusDriverFactory:
        return make_bus

    return lookup
