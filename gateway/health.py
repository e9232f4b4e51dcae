"""Health as state, not log lines: every device and every part of the core (buffer, uplink) is
up or down, and only a change of state is logged (the failure once, the recovery once), as Home
Assistant's update coordinator does.

The service owns one :class:`HealthRegistry`; the sink, the pollers and the forwarder write to
it, and whatever reports health (the CLI, metrics, systemd's ``STATUS=`` and watchdog) reads it.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

from gateway.driver import CountingBusDriver, LineCounts

log = logging.getLogger(__name__)


class BufferFigures(Protocol):
    """What the health message reads of the buffer (its ``BufferStats``)."""

    @property
    def waiting(self) -> int: ...
    @property
    def oldest_read_at_ms(self) -> int | None: ...
    @property
    def dropped(self) -> int: ...
    @property
    def quarantined(self) -> int: ...


@dataclass(slots=True)
class DeviceHealth:
    device: str
    up: bool | None = None  # None until the first poll has finished
    polls_ok: int = 0
    polls_failed: int = 0
    #: Failures that were not a DeviceError: a bug in the driver or an unexpected library
    #: error. Counted apart so that a fleet manager can tell a dead meter from a broken driver.
    driver_faults: int = 0
    cycles_skipped: int = 0
    last_error: str | None = None
    last_success_ms: int | None = None

    def succeeded(self, read_at_ms: int) -> None:
        self.polls_ok += 1
        self.last_success_ms = read_at_ms
        if self.up is False:
            log.info("device %s answers again after %s", self.device, self.last_error)
        self.up = True
        self.last_error = None

    def failed(self, error: str) -> None:
        self.polls_failed += 1
        if self.up is not False:
            log.warning("device %s failed: %s (logged once until it recovers)", self.device, error)
        self.up = False
        self.last_error = error

    def faulted(self, error: BaseException) -> None:
        """The driver raised something it should not have: log it with its traceback, once per
        outage, and count it; the device is polled again on its next slot."""
        self.polls_failed += 1
        self.driver_faults += 1
        if self.up is not False:
            log.error(
                "device %s: the driver failed unexpectedly (a bug; the device is retried on its "
                "next slot, the others are not affected; logged once until it recovers)",
                self.device,
                exc_info=error,
            )
        self.up = False
        self.last_error = f"driver fault: {type(error).__name__}: {error}"

    def skipped(self, cycles: int) -> None:
        if self.cycles_skipped == 0:
            log.warning(
                "device %s: a poll took longer than the interval; cycles are skipped and "
                "counted (lengthen the interval or raise the timeout less)",
                self.device,
            )
        self.cycles_skipped += cycles


@dataclass(slots=True)
class PartHealth:
    """A part of the core (the buffer, the uplink) that works or does not. ``consequence`` says
    in the failure's log line what the failure costs, so the reader knows how worried to be."""

    part: str
    consequence: str
    up: bool | None = None
    failures: int = 0
    last_error: str | None = None
    #: Things that went wrong once and were dealt with while the part kept working (a buffered
    #: row quarantined): each is logged once, when it happens, and counted.
    incidents: int = 0

    def incident(self, what: str) -> None:
        self.incidents += 1
        log.warning("%s: %s", self.part, what)

    def failed(self, error: str) -> None:
        self.failures += 1
        if self.up is not False:
            log.warning(
                "%s failed: %s; %s (logged once until it recovers)",
                self.part,
                error,
                self.consequence,
            )
        self.up = False
        self.last_error = error

    def recovered(self) -> None:
        if self.up is False:
            log.info("%s works again after %s", self.part, self.last_error)
        self.up = True
        self.last_error = None


@dataclass(slots=True)
class Progress:
    """Evidence that the gateway does its job, for the systemd watchdog: readings that entered
    the sink and when the last one did (monotonic seconds)."""

    readings_stored: int = 0
    #: Submitted while the disk failed: waiting in the buffer's memory queue, not yet durable.
    readings_held: int = 0
    readings_lost: int = 0
    last_stored_at: float | None = None

    def stored(self, now: float, count: int = 1) -> None:
        self.readings_stored += count
        self.last_stored_at = now


@dataclass(slots=True)
class BusHealth:
    """The counters of one bus's line and of each unit on it (requests, timeouts, CRC and
    framing errors, breaker state), for buses whose driver counts them
    (:class:`gateway.driver.CountingBusDriver`). ``refresh`` takes a snapshot from the driver;
    whoever reports health calls it first (a scrape), so nothing is counted twice."""

    bus: str
    source: Callable[[], LineCounts]
    counts: LineCounts = field(default_factory=LineCounts)

    def refresh(self) -> LineCounts:
        self.counts = self.source()
        return self.counts


#: Upper bounds (seconds) of the publish latency histogram's buckets: a loopback broker answers
#: in milliseconds, a cellular link in seconds, an overloaded one in tens of seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class LatencyHistogram:
    """Counts of latencies at most each bound (Prometheus' cumulative buckets are made from
    these at scrape time), their sum and their number."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    #: One count per bound, and a last one for what exceeds every bound.
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        # The first bound at least ``seconds``; past the last one, the overflow count.
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound as Prometheus writes it, count at most that), ending with ``+Inf``."""
        running = 0
        buckets: list[tuple[str, int]] = []
        for bound, counted in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += counted
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        return buckets


@dataclass(slots=True)
class UplinkCounts:
    """What the forwarder counts of its connections and publishes."""

    #: Sessions that connected; every one after the first is a reconnect.
    connects: int = 0
    #: From handing a message to the session to its PUBACK.
    publish_latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The figures of the periodic health message, taken at one moment (``at_ms``)."""

    at_ms: int
    devices: tuple[DeviceHealth, ...]
    uplink_reconnects: int
    uplink_failures: int
    published: int
    publish_latency_sum: float
    readings_lost: int
    #: From the buffer (None when it cannot be read: the disk fails).
    waiting: int | None
    oldest_read_at_ms: int | None
    dropped: int | None
    quarantined: int | None
    storing_up: bool | None
    #: Per bus whose driver counts: its line's counters.
    buses: tuple[tuple[str, LineCounts], ...] = ()


@dataclass(slots=True)
class HealthRegistry:
    """Every device's health and the core's parts, owned by the service."""

    devices: dict[str, DeviceHealth] = field(default_factory=dict)
    #: Two views of one buffer, kept apart so that a failing delete and working appends do not
    #: log a failure and a recovery alternately: what each failure costs differs too.
    storing: PartHealth = field(
        default_factory=lambda: PartHealth(
            "storing readings in the buffer",
            "new readings wait in memory up to buffer.memory_queue, then the oldest are dropped "
            "and counted",
        )
    )
    forwarding: PartHealth = field(
        default_factory=lambda: PartHealth(
            "reading the buffer for the uplink", "readings wait in the buffer; nothing is lost"
        )
    )
    uplink: PartHealth = field(
        default_factory=lambda: PartHealth("the uplink", "readings stay buffered")
    )
    progress: Progress = field(default_factory=Progress)
    buses: dict[str, BusHealth] = field(default_factory=dict)
    uplink_counts: UplinkCounts = field(default_factory=UplinkCounts)

    def report(self, at_ms: int, buffer: BufferFigures | None) -> HealthReport:
        """A snapshot for the health message; ``buffer``: the buffer's figures, if readable."""
        latency = self.uplink_counts.publish_latency
        return HealthReport(
            at_ms=at_ms,
            devices=tuple(replace(device) for device in self.devices.values()),
            uplink_reconnects=self.uplink_counts.reconnects,
            uplink_failures=self.uplink.failures,
            published=latency.count,
            publish_latency_sum=latency.total,
            readings_lost=self.progress.readings_lost,
            waiting=buffer.waiting if buffer else None,
            oldest_read_at_ms=buffer.oldest_read_at_ms if buffer else None,
            dropped=buffer.dropped if buffer else None,
            quarantined=buffer.quarantined if buffer else None,
            storing_up=self.storing.up,
            buses=tuple(self._bus_counts()),
        )

    def _bus_counts(self) -> Iterable[tuple[str, LineCounts]]:
        for name, bus in sorted(self.buses.items()):
            try:
                yield name, bus.refresh()
            except Exception:  # a driver's bug must not cost the health message
                log.debug("bus %s: counters not readable", name, exc_info=True)

    def watch_bus(self, name: str, driver: object) -> None:
        """Report bus ``name``'s line counters from now on, if its driver counts them (the hook
        is optional: a bus without counters is simply not listed)."""
        if isinstance(driver, CountingBusDriver):
            self.buses[name] = BusHealth(name, driver.line_counts)

    def device(self, name: str) -> DeviceHealth:
        """The health of device ``name``, created on first use."""
        health = self.devices.get(name)
        if health is None:
            health = self.devices[name] = DeviceHealth(name)
        return health

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget devices that left the config (on a reload)."""
        keep = set(names)
        for name in [name for name in self.devices if name not in keep]:
            del self.devices[name]

    def status_line(self) -> str:
        """One line a person can read, for systemd's ``STATUS=``."""
        up = sum(1 for health in self.devices.values() if health.up)
        down = sum(1 for health in self.devices.values() if health.up is False)
        uplink = {None: "connecting", True: "connected", False: "down"}[self.uplink.up]
        failing = self.storing.up is False or self.forwarding.up is False
        buffer = "failing" if failing else "ok"
        return (
            f"devices: {up} ok, {down} failing; uplink {uplink}; buffer {buffer}; "
            f"{self.progress.readings_stored} readings stored"
        )
