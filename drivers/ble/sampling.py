"""Per sensor: which of its advertisements become readings, and when it counts as missing.
Pure: the times are passed in (monotonic seconds), so it is tested over a manual clock.

A sensor that advertises every second is written once per ``interval``: the first
advertisement opens a window, and when the window is ``interval`` old its reading is taken, with
the newest value of each measurement (``last``) or their mean (``mean``). A sensor not heard for
``stale_after`` is missing once (and a sensor never heard is missing ``stale_after`` after the
scan started); the next advertisement brings it back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from drivers.ble.settings import Sampling
from gateway.readings import PointValue


@dataclass(frozen=True, slots=True)
class Sample:
    """The readings of one interval: values and the wall time of the newest advertisement."""

    values: tuple[PointValue, ...]
    read_at_ms: int


@dataclass(slots=True)
class _Window:
    opened_at: float
    newest_ms: int
    #: name -> every value heard in the window, in order.
    values: dict[str, list[float | int | str]] = field(default_factory=dict)
    units: dict[str, str | None] = field(default_factory=dict)


class SensorSampler:
    """Sampling and staleness of one sensor."""

    def __init__(
        self, interval: float, sampling: Sampling, stale_after: float, started_at: float
    ) -> None:
        self.interval = interval
        self.sampling = sampling
        self.stale_after = stale_after
        self.last_heard = started_at
        self.heard_ever = False
        self.missing = False
        self._window: _Window | None = None

    def scan_started(self, now: float) -> None:
        """Scanning (re)started at ``now``: a sensor not yet missing gets its full staleness
        limit from now, since nobody could hear it while the adapter was away."""
        if not self.missing:
            self.last_heard = max(self.last_heard, now)

    def add(self, values: Sequence[PointValue], now: float, wall_ms: int) -> bool:
        """An advertisement's values, heard at ``now``. Returns True when it ends an absence
        (the sensor was reported missing)."""
        returned = self.missing
        self.missing = False
        self.heard_ever = True
        self.last_heard = now
        window = self._window
        if window is None:
            window = self._window = _Window(opened_at=now, newest_ms=wall_ms)
        window.newest_ms = wall_ms
        for point in values:
            if point.value is None:
                continue
            window.values.setdefault(point.name, []).append(point.value)
            window.units[point.name] = point.unit
        return returned

    def heard(self, now: float) -> bool:
        """Heard without values (a repeated packet): alive, nothing to record. Returns True
        when it ends an absence."""
        returned = self.missing
        self.missing = False
        self.heard_ever = True
        self.last_heard = now
        return returned

    def take(self, now: float) -> Sample | None:
        """The window's reading once it is ``interval`` old; None before (or with no window)."""
        window = self._window
        if window is None or now < window.opened_at + self.interval:
            return None
        # The next window opens now, so a steady advertiser gives one reading per interval;
        # a window that ends empty is dropped, and the next advertisement opens a new one.
        self._window = _Window(opened_at=now, newest_ms=window.newest_ms) if window.values else None
        if not window.values:
            return None
        points = tuple(
            PointValue(name, self._combine(heard), window.units.get(name))
            for name, heard in window.values.items()
        )
        return Sample(points, window.newest_ms)

    def went_missing(self, now: float) -> bool:
        """True once, when the sensor has not been heard for ``stale_after``."""
        if self.missing or now - self.last_heard < self.stale_after:
            return False
        self.missing = True
        self._window = None
        return True

    def _combine(self, heard: list[float | int | str]) -> float | int | str:
        newest = heard[-1]
        if self.sampling is Sampling.LAST or len(heard) == 1:
            return newest
        numbers = [v for v in heard if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) != len(heard):
            return newest  # text: the newest
        return mean_of(numbers)


def mean_of(numbers: Sequence[float | int]) -> float:
    """The mean, to one decimal more than the values carry (so 21.37 and 21.38 give 21.375,
    not 21.375000000000004)."""
    total = math.fsum(numbers) / len(numbers)
    places = max(_decimals(v) for v in numbers) + 1
    return round(total, places)


def _decimals(number: float | int) -> int:
    exponent = Decimal(repr(number)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0
