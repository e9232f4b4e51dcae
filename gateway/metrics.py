"""A Prometheus endpoint on localhost: the health registry and the buffer as metrics, read at
scrape time (nothing is kept twice).

Served by the event loop itself (asyncio.start_server; a scrape is a few hundred bytes of text),
so it is one more task the service owns and cancels, with no thread reading state the loop is
changing. prometheus-client does the exposition format; its own global registry is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.buffer import BufferStats
from gateway.health import HealthRegistry

log = logging.getLogger(__name__)

#: A request line and headers larger than this are not a scraper's.
_REQUEST_LIMIT = 8192
#: How long to wait before trying a busy port again.
_RETRY_LISTEN = 30.0


class _Snapshot(Collector):
    """Metrics from a health registry and a buffer's figures taken just before the scrape."""

    def __init__(self, health: HealthRegistry) -> None:
        self._health = health
        self.buffer: BufferStats | None = None

    def collect(self) -> Iterator[Metric]:
        health = self._health
        devices = list(health.devices.values())
        up = GaugeMetricFamily(
            "fieldgate_device_up", "1 if the last poll worked", labels=["device"]
        )
        polls = CounterMetricFamily(
            "fieldgate_device_polls", "Polls by outcome", labels=["device", "outcome"]
        )
        skipped = CounterMetricFamily(
            "fieldgate_device_cycles_skipped",
            "Poll slots missed: a poll ran long",
            labels=["device"],
        )
        last = GaugeMetricFamily(
            "fieldgate_device_last_success_timestamp_seconds",
            "When the device last answered (UTC)",
            labels=["device"],
        )
        for device in devices:
            if device.up is not None:
                up.add_metric([device.device], 1.0 if device.up else 0.0)
            plain_failures = device.polls_failed - device.driver_faults
            polls.add_metric([device.device, "ok"], device.polls_ok)
            polls.add_metric([device.device, "failed"], plain_failures)
            polls.add_metric([device.device, "driver_fault"], device.driver_faults)
            skipped.add_metric([device.device], device.cycles_skipped)
            if device.last_success_ms is not None:
                last.add_metric([device.device], device.last_success_ms / 1000)
        yield from (up, polls, skipped, last)
        yield CounterMetricFamily(
            "fieldgate_readings_stored", "Readings stored", value=health.progress.readings_stored
        )
        yield CounterMetricFamily(
            "fieldgate_readings_lost",
            "Readings lost because the buffer failed",
            value=health.progress.readings_lost,
        )
        parts = GaugeMetricFamily("fieldgate_part_up", "1 if the part works", labels=["part"])
        failures = CounterMetricFamily(
            "fieldgate_part_failures", "Failures of a part (reconnect attempts)", labels=["part"]
        )
        for name, part in (
            ("uplink", health.uplink),
            ("buffer_storing", health.storing),
            ("buffer_forwarding", health.forwarding),
        ):
            if part.up is not None:
                parts.add_metric([name], 1.0 if part.up else 0.0)
            failures.add_metric([name], part.failures)
        yield from (parts, failures)
        counts = health.uplink_counts
        yield CounterMetricFamily(
            "fieldgate_uplink_reconnects",
            "Connections to the broker made again after the first",
            value=counts.reconnects,
        )
        latency = counts.publish_latency
        yield HistogramMetricFamily(
            "fieldgate_uplink_publish_latency_seconds",
            "From handing a message (a reading, an event) to the MQTT session to its PUBACK",
            buckets=latency.cumulative(),
            sum_value=latency.total,
        )
        yield from self._buses()
        if self.buffer is not None:
            yield GaugeMetricFamily(
                "fieldgate_buffer_rows_waiting", "Readings waiting", value=self.buffer.waiting
            )
            yield CounterMetricFamily(
                "fieldgate_buffer_dropped", "Readings the limits dropped", value=self.buffer.dropped
            )
            yield CounterMetricFamily(
                "fieldgate_buffer_quarantined",
                "Buffered readings that no longer decoded, moved to the quarantine table",
                value=self.buffer.quarantined,
            )
            if self.buffer.oldest_read_at_ms is not None:
                yield GaugeMetricFamily(
                    "fieldgate_buffer_oldest_reading_timestamp_seconds",
                    "Read time of the oldest waiting reading (UTC)",
                    value=self.buffer.oldest_read_at_ms / 1000,
                )

    def _buses(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "fieldgate_bus_requests", "Requests sent on the bus's line", labels=["bus"]
        )
        timeouts = CounterMetricFamily(
            "fieldgate_bus_timeouts", "Requests that got no answer in time", labels=["bus"]
        )
        errors = CounterMetricFamily(
            "fieldgate_bus_errors",
            "Answers that were no valid answer, by kind (crc, malformed, late: an answer to an "
            "abandoned request, closed: the peer closed the connection)",
            labels=["bus", "kind"],
        )
        unit_requests = CounterMetricFamily(
            "fieldgate_bus_unit_requests", "Requests to one unit", labels=["bus", "unit"]
        )
        unit_timeouts = CounterMetricFamily(
            "fieldgate_bus_unit_timeouts", "Timeouts of one unit", labels=["bus", "unit"]
        )
        unit_errors = CounterMetricFamily(
            "fieldgate_bus_unit_errors", "Invalid answers of one unit", labels=["bus", "unit"]
        )
        breaker = GaugeMetricFamily(
            "fieldgate_bus_unit_breaker_open",
            "1 while the unit is backed off (its polls fail at once, the line is spared)",
            labels=["bus", "unit"],
        )
        for name, bus in sorted(self._health.buses.items()):
            try:
                counts = bus.refresh()
            except Exception:  # a driver's bug must not cost the whole scrape
                log.debug("bus %s: counters not readable", name, exc_info=True)
                continue
            requests.add_metric([name], counts.requests)
            timeouts.add_metric([name], counts.timeouts)
            for kind, value in (
                ("crc", counts.crc_errors),
                ("malformed", counts.malformed),
                ("late", counts.late_answers),
                ("closed", counts.closed_by_peer),
            ):
                errors.add_metric([name, kind], value)
            for unit, slave in counts.slaves.items():
                labels = [name, str(unit)]
                unit_requests.add_metric(labels, slave.requests)
                unit_timeouts.add_metric(labels, slave.timeouts)
                unit_errors.add_metric(labels, slave.errors)
                breaker.add_metric(labels, 1.0 if slave.breaker == "open" else 0.0)
        yield from (requests, timeouts, errors, unit_requests, unit_timeouts, unit_errors, breaker)


async def serve_metrics(
    host: str,
    port: int,
    health: HealthRegistry,
    buffer_stats: Callable[[], Awaitable[BufferStats]],
) -> None:
    """Answer ``GET /metrics`` on ``host:port`` until cancelled."""
    snapshot = _Snapshot(health)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(snapshot)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readuntil(b"\r\n\r\n")
            method, path, *_ = [*request.split(b" ", 2), b"", b""]
            if method != b"GET" or path.split(b"?")[0] not in (b"/metrics", b"/"):
                body, status, kind = b"not found\n", b"404 Not Found", b"text/plain"
            else:
                try:
                    snapshot.buffer = await buffer_stats()
                except Exception:  # noqa: BLE001 - a failing buffer shows as missing figures
                    snapshot.buffer = None
                body, status, kind = (
                    generate_latest(registry),
                    b"200 OK",
                    CONTENT_TYPE_LATEST.encode(),
                )
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
                + b"\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that went away or was not speaking HTTP: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    warned = False
    while True:
        try:
            server = await asyncio.start_server(answer, host, port, limit=_REQUEST_LIMIT)
        except OSError as exc:
            if not warned:
                log.warning(
                    "no metrics: cannot listen on %s:%d (%s); set metrics.port to a free port "
                    "(tried again every %gs)",
                    host,
                    port,
                    exc.strerror,
                    _RETRY_LISTEN,
                )
                warned = True
            await asyncio.sleep(_RETRY_LISTEN)
            continue
        log.info("metrics on http://%s:%d/metrics", host, port)
        async with server:
            await server.serve_forever()
