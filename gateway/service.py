"""The supervisor: opens the buffer and the buses, owns every long-running task, contains their
failures, and stops them all within the configured bound.

Every task is one of: a :class:`~gateway.scheduler.DevicePoller` per polled device, a stream per
streaming bus, and the forwarder. Each runs under :func:`_keep_running`, which logs an escaped
exception once with its traceback and starts the part again after a backoff, so a bug in one
part costs that part and never the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from drivers.factories import bus_driver_factory
from gateway import version
from gateway.backoff import Backoff
from gateway.buffer import Buffer
from gateway.clock import Clock, SystemClock, epoch_ms
from gateway.commands import CommandHandler, RecentIds
from gateway.config.isolated import read_settings_async
from gateway.descriptions import Descriptions
from gateway.driver import BusDriver, BusDriverFactory, PolledDevice, StreamingBusDriver
from gateway.errors import ConfigError, StorageError
from gateway.health import HealthRegistry
from gateway.readings import DeviceInfo, PointInfo
from gateway.reloads import Switch, Switches, watch_for_rollback
from gateway.scheduler import DevicePoller
from gateway.settings import BusSettings, DeviceSettings, GatewaySettings
from gateway.shutdown import Budget, Deadline, ShutdownRequest
from gateway.sink import Sink
from gateway.systemd import Notifier, report_to_systemd, watchdog_period
from gateway.upstream.forwarder import Forwarder
from gateway.upstream.homeassistant import Discovery
from gateway.upstream.json_dialect import GatewayInfo, JsonDialect

log = logging.getLogger(__name__)

#: Of the stop bound, the most the goodbye to the broker may take: the retained ``offline`` is
#: worth a moment, not the whole bound (the last will says the same, only later).
_GOODBYE_MAX = 2.0
#: How often tasks that have not ended are cancelled again while stopping.
_RECANCEL_EVERY = 0.05


@dataclass(frozen=True, slots=True)
class _Part:
    """A long-running part of the gateway and how to run it once."""

    name: str
    run: Callable[[], Awaitable[None]]


async def run_gateway(
    config: GatewaySettings,
    shutdown: ShutdownRequest | None = None,
    clock: Clock | None = None,
    health: HealthRegistry | None = None,
    *,
    drivers: Callable[[str], BusDriverFactory] = bus_driver_factory,
    config_path: Path | None = None,
) -> None:
    """Run until a stop is requested (SIGTERM or SIGINT), then stop within the configured bound
    (``gateway.stop_timeout``) with everything stored committed in the buffer. ``drivers``
    gives the factory of a bus type (the catalog's; tests bring drivers of their own).

    SIGHUP reloads ``config_path``, and so does a remote ``reload`` command (or with the config
    it carries): the new config is validated first, and a config with mistakes is refused with
    the reasons logged (and returned to the command) while the running one goes on. An
    accepted one replaces the running one: the parts stop (within the same bound) and start
    again with it, on the same buffer file or the new one the config names; nothing stored is
    lost. If the broker was reachable and the new config does not reach its broker within
    ``gateway.reload_rollback``, the last config that did runs again (gateway.reloads)."""
    clock = clock or SystemClock()
    health = health or HealthRegistry()
    shutdown = shutdown or ShutdownRequest()
    shutdown.set_bound(config.gateway.stop_timeout)
    stop = shutdown.attach(asyncio.get_running_loop())
    try:
        if stop.is_set():
            log.info("stop requested before start; nothing was opened")
            return
        lifetime = _Lifetime(
            started_ms=epoch_ms(clock),  # the birth's start time: kept across reloads
            recent=RecentIds(config.commands.remember),
            switches=Switches(),
        )
        running: Switch | None = Switch(config)
        last_good = config
        while running is not None:
            shutdown.set_bound(running.config.gateway.stop_timeout)
            connects = health.uplink_counts.connects
            upcoming = await _run_config(
                running,
                config_path,
                shutdown,
                stop,
                clock=clock,
                health=health,
                drivers=drivers,
                lifetime=lifetime,
            )
            if health.uplink_counts.connects > connects:
                last_good = running.config
            if upcoming is not None and upcoming.rolled_back is None and health.uplink.up:
                # A reload while the broker is reachable must keep it so, or be undone.
                upcoming = replace(upcoming, fallback=last_good)
            running = upcoming
        took = shutdown.seconds_since_request()
        log.info(
            "stopped%s", f" {took * 1000:.0f} ms after the request" if took is not None else ""
        )
    finally:
        shutdown.detach()


@dataclass(frozen=True, slots=True)
class _Lifetime:
    """What outlives each config: the start time, the command ids seen, the switches asked."""

    started_ms: int
    recent: RecentIds
    switches: Switches


async def _run_config(
    switch: Switch,
    config_path: Path | None,
    shutdown: ShutdownRequest,
    stop: asyncio.Event,
    *,
    clock: Clock,
    health: HealthRegistry,
    drivers: Callable[[str], BusDriverFactory],
    lifetime: _Lifetime,
) -> Switch | None:
    """Run one config until a stop (returns None) or an accepted reload or rollback (returns
    the switch), and take its parts down within the bound either way."""
    config = switch.config
    # What an earlier config of this process froze (see _settle) may be garbage now.
    gc.unfreeze()
    health.keep_only(device.name for device in config.devices)
    health.buses.clear()  # each bus of this config registers its counters again when opened
    for device in config.devices:
        health.device(device.name)  # every configured device is in the registry from the start
    if config.mqtt.tls is not None and not config.mqtt.tls.verify_hostname:
        log.warning(
            "mqtt.tls.verify_hostname is off: any certificate the CA signed is taken for %s "
            "(for a lab, never for a fleet)",
            config.mqtt.host,
        )
    # The parts of this config stop on this event: set on a stop, and on an accepted reload.
    ending = asyncio.Event()
    limits = config.buffer
    buffer = await Buffer.open(
        limits.path,
        limits.max_size,
        limits.max_age,
        commit_delay=limits.commit_delay,
        memory_queue=limits.memory_queue,
        storing=health.storing,
    )
    deadline: Deadline = shutdown
    try:
        async with contextlib.AsyncExitStack() as buses:
            # The config's descriptions, completed by what devices say of themselves (drivers
            # report that through the sink; the dialect and discovery read it).
            descriptions = Descriptions(_described(config.devices))
            described = descriptions.configured()
            sink = Sink(buffer, health, clock, descriptions)
            parts, polled = await _open_buses(config, drivers, buses, sink, clock, ending, health)
            parts.append(_Part("clock watch", sink.watch_clock))
            dialect = JsonDialect(
                config.mqtt.topic_prefix,
                config.gateway.id,
                GatewayInfo(version(), config.config_hash, lifetime.started_ms, described),
                descriptions,
            )
            forwarder = Forwarder(
                config.mqtt,
                dialect,
                buffer,
                clock,
                health.uplink,
                health.forwarding,
                gateway_id=config.gateway.id,
                replay_rate=limits.replay_rate,
                health=health,
                health_interval=config.health.interval,
                commands=_command_handler(
                    config, config_path, polled, described, buffer, lifetime, clock
                ),
                after_birth=switch.outcome(epoch_ms(clock)),
                discovery=await _discovery(config, dialect, descriptions),
            )
            if config.metrics is not None:
                # Only here: prometheus-client (and the HTTP modules it pulls in) is ~1.5 MB
                # of RSS a gateway without a metrics section never needs.
                from gateway.metrics import serve_metrics  # noqa: PLC0415

                parts.append(
                    _Part(
                        "metrics endpoint",
                        partial(
                            serve_metrics,
                            config.metrics.listen,
                            config.metrics.port,
                            health,
                            buffer.stats,
                        ),
                    )
                )
            notifier = Notifier()
            parts.append(
                _Part(
                    "report to systemd",
                    partial(
                        report_to_systemd,
                        notifier,
                        health,
                        buffer.probe,
                        watchdog_period(),
                        ending,
                    ),
                )
            )
            started = await _start_line(config, buffer)
            _settle()
            next_config, deadline = await _serve(
                parts,
                watch=partial(watch_for_rollback, switch, health, clock, lifetime.switches),
                switches=lifetime.switches,
                started=started,
                notifier=notifier,
                forwarder=forwarder,
                health=health,
                stop=stop,
                ending=ending,
                shutdown=shutdown,
                clock=clock,
                reload=partial(_reload, shutdown, config_path),
            )
            # Leaving the stack closes the buses: bounded like every other step.
            await _bounded(buses.aclose(), deadline, "closing the buses")
    finally:
        await _bounded(buffer.close(), deadline, "closing the buffer")
    return next_config


def _described(devices: Sequence[DeviceSettings]) -> tuple[DeviceInfo, ...]:
    """Each device's info, for the life of this config; equal lists of points (meters of one
    kind) as one tuple, not one per device (a 30-point meter's is 2.5 kB)."""
    lists: dict[tuple[PointInfo, ...], tuple[PointInfo, ...]] = {}
    infos: list[DeviceInfo] = []
    for device in devices:
        info = device.info()
        points = lists.setdefault(info.points, info.points)
        infos.append(info if points is info.points else replace(info, points=points))
    return tuple(infos)


def _settle() -> None:
    """Once the config is read and its parts are built: collect what building them left
    behind, and move what lives on (imported modules, config models, drivers) out of the
    collector's generations. Readings that live a little while (in a group commit, on their way
    to the broker) reach the oldest generation and set off full collections every few seconds;
    those then no longer walk everything the process holds for its life. Garbage among the
    frozen objects is freed as usual when its count drops to zero; only cycles wait, for the
    next reload's unfreeze."""
    gc.collect()
    gc.freeze()
    _return_freed_memory()


def _return_freed_memory() -> None:
    """Give the kernel back the free pages glibc's malloc keeps after start-up (what reading
    and validating the config and opening the buses freed): without it they stay in the RSS
    for the life of the process. Elsewhere than glibc (musl), nothing to do."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


async def _discovery(
    config: GatewaySettings, dialect: JsonDialect, described: Descriptions
) -> Discovery | None:
    """Home Assistant discovery, when the config asks for it; what it announced before is
    kept beside the buffer."""
    if not config.homeassistant.discovery:
        return None
    return await asyncio.to_thread(
        partial(
            Discovery,
            prefix=config.homeassistant.prefix,
            gateway_id=config.gateway.id,
            status_topic=dialect.status_topic,
            reading_topic=dialect.reading_topic("{device}"),
            devices=described,
            state_file=config.buffer.path.parent / "homeassistant-discovery.json",
        )
    )


def _command_handler(  # noqa: PLR0917 - what commands reach
    config: GatewaySettings,
    config_path: Path | None,
    polled: Mapping[str, PolledDevice],
    described: Sequence[DeviceInfo],
    buffer: Buffer,
    lifetime: _Lifetime,
    clock: Clock,
) -> CommandHandler | None:
    if not config.commands.enabled:
        return None

    async def request_reload(new: GatewaySettings, command_id: str) -> None:
        lifetime.switches.ask(Switch(new, command_id))

    return CommandHandler(
        prefix=config.mqtt.topic_prefix,
        gateway_id=config.gateway.id,
        devices=polled,
        described={device.name: device for device in described},
        buffer=buffer,
        recent=lifetime.recent,
        reload=request_reload,
        config_path=config_path,
        now_ms=partial(epoch_ms, clock),
    )


async def _reload(shutdown: ShutdownRequest, config_path: Path | None) -> GatewaySettings | None:
    """On SIGHUP: the config file again, validated; None (and the reasons logged) if it cannot
    replace the running one."""
    shutdown.reload.clear()
    if config_path is None:
        log.warning("SIGHUP: no config file to reload (the config was not read from a file)")
        return None
    try:
        return await read_settings_async(config_path)
    except ConfigError as exc:
        log.error(  # noqa: TRY400 - the problems are the message; a traceback adds nothing
            "SIGHUP: %s is not valid, the running config stays:\n  %s",
            config_path,
            "\n  ".join(exc.problems),
        )
        return None


async def _start_line(config: GatewaySettings, buffer: Buffer) -> str:
    """What a technician reading the journal wants first: where it sends, what it polls, and
    what waits from before."""
    try:
        waiting: int | str = (await buffer.stats()).waiting
    except StorageError:
        # Not open (a read-only or full disk): the gateway runs on, readings wait in memory.
        waiting = "no"
    buses = ", ".join(f"{bus.name} ({bus.type})" for bus in config.buses)
    return (
        f"{len(config.devices)} device(s) on {buses}; broker {config.mqtt.host}:"
        f"{config.mqtt.port}; {waiting} reading(s) waiting in {config.buffer.path}"
    )


async def _open_buses(  # noqa: PLR0917 - one caller, each argument a different part
    config: GatewaySettings,
    drivers: Callable[[str], BusDriverFactory],
    buses: contextlib.AsyncExitStack,
    sink: Sink,
    clock: Clock,
    stop: asyncio.Event,
    health: HealthRegistry,
) -> tuple[list[_Part], dict[str, PolledDevice]]:
    """Open every bus and return the parts that poll and stream them, and the polled devices
    by name (for remote commands; a bus opened later adds its own). A bus whose driver fails
    to open (which the driver contract forbids: a bug) costs that bus's devices only: it
    becomes a part that retries the opening with a backoff and then runs its own pollers."""
    polled: dict[str, PolledDevice] = {}
    parts: list[_Part] = []
    for bus_config in config.buses:
        bus_parts = _BusParts(
            bus_config, config.devices_on(bus_config.name), sink, clock, stop, polled
        )
        opening = partial(
            _open_bus, bus_config, config.devices_on(bus_config.name), drivers, buses, clock
        )
        try:
            bus = await opening()
        except Exception as exc:  # a driver's bug costs its bus, not the gateway
            log.exception(
                "bus %s (%s) could not be opened (a bug in its driver); its devices are "
                "reported failing and the opening is retried, the other buses go on",
                bus_config.name,
                bus_config.type,
            )
            bus_parts.unopened(health, exc)
            parts.append(
                _Part(f"bus {bus_config.name}", partial(bus_parts.open_then_run, opening, health))
            )
        else:
            parts += bus_parts.of(bus, health)
    return parts, polled


async def _open_bus(
    bus_config: BusSettings,
    devices: Sequence[DeviceSettings],
    drivers: Callable[[str], BusDriverFactory],
    buses: contextlib.AsyncExitStack,
    clock: Clock,
) -> BusDriver:
    factory = drivers(bus_config.type)
    return await buses.enter_async_context(factory(bus_config, devices, clock))


class _BusParts:
    """The parts of one open bus: a poller per polled device and the stream of a streaming bus.
    Its polled devices join ``polled`` (what remote commands reach) once the bus is open."""

    def __init__(  # noqa: PLR0917 - one caller
        self,
        bus_config: BusSettings,
        devices: Sequence[DeviceSettings],
        sink: Sink,
        clock: Clock,
        stop: asyncio.Event,
        polled: dict[str, PolledDevice],
    ) -> None:
        self._config = bus_config
        self._devices = devices
        self._sink = sink
        self._clock = clock
        self._stop = stop
        self._polled = polled

    def of(self, bus: BusDriver, health: HealthRegistry) -> list[_Part]:
        health.watch_bus(self._config.name, bus)  # line counters, if the driver counts them
        parts: list[_Part] = []
        if isinstance(bus, StreamingBusDriver):
            parts.append(
                _Part(f"stream of bus {self._config.name}", _stream_runner(bus, self._sink))
            )
        polled = {device.name: device for device in bus.devices}
        self._polled.update(polled)
        for device in self._devices:
            if device.name in polled:
                poller = DevicePoller(
                    polled[device.name], device.interval, self._sink, self._clock, self._stop
                )
                parts.append(_Part(f"poller of {device.name}", poller.run))
        return parts

    def unopened(self, health: HealthRegistry, error: Exception) -> None:
        for device in self._devices:
            health.device(device.name).failed(
                f"bus {self._config.name} could not be opened: {type(error).__name__}: {error}"
            )

    async def open_then_run(
        self, opening: Callable[[], Awaitable[BusDriver]], health: HealthRegistry
    ) -> None:
        """The part of a bus that failed to open: try again after a capped, jittered backoff
        (each failure at debug: the first was logged with its traceback), then run the bus's
        own parts until stopped."""
        backoff = Backoff(base=1.0, cap=60.0)
        while True:
            await self._clock.sleep(backoff.failed(self._clock.monotonic()))
            try:
                bus = await opening()
            except Exception as exc:  # noqa: BLE001 - a driver's bug costs its bus
                log.debug("bus %s failed to open again: %r", self._config.name, exc)
            else:
                break
        log.info("bus %s opened on a retry", self._config.name)
        async with asyncio.TaskGroup() as group:
            for part in self.of(bus, health):
                group.create_task(_keep_running(part, self._stop, self._clock), name=part.name)


def _stream_runner(bus: StreamingBusDriver, sink: Sink) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await bus.stream(sink)

    return run


async def _serve(
    parts: Sequence[_Part],
    *,
    started: str,
    notifier: Notifier,
    forwarder: Forwarder,
    health: HealthRegistry,
    stop: asyncio.Event,
    ending: asyncio.Event,
    shutdown: ShutdownRequest,
    clock: Clock,
    reload: Callable[[], Coroutine[Any, Any, GatewaySettings | None]],
    watch: Callable[[], Coroutine[Any, Any, None]],
    switches: Switches,
) -> tuple[Switch | None, Deadline]:
    """Run the parts until a stop, an accepted reload or a rollback; returns the switch (None
    for a stop) and the deadline the rest of the teardown keeps."""
    producers = {
        asyncio.create_task(_keep_running(part, ending, clock), name=part.name) for part in parts
    }
    producers.add(asyncio.create_task(watch(), name="reload watch"))
    uplink = asyncio.create_task(
        _keep_running(_Part("uplink", forwarder.run), ending, clock), name="uplink"
    )
    next_config: Switch | None = None
    deadline: Deadline = shutdown
    try:
        log.info("fieldgate running: %s", started)
        notifier.send(f"READY=1\nSTATUS={health.status_line()}")
        while next_config is None and not stop.is_set():
            await _first_of(stop, shutdown.reload, switches.asked)
            if stop.is_set():
                break
            next_config = switches.take()
            if next_config is None and shutdown.reload.is_set():
                reloaded = await _unless_stopped(reload(), stop)
                next_config = Switch(reloaded) if reloaded is not None else None
    finally:
        # Also when we are cancelled ourselves: no task outlives its owner, and the bound holds.
        ending.set()
        if next_config is not None and not stop.is_set():
            deadline = Budget(shutdown.bound or 0.0)
            log.info("reloading the config (parts stop within %.1fs)", deadline.seconds_left())
            notifier.send("RELOADING=1")
        else:
            next_config = None
            shutdown.request()
            log.info("stopping (within %.1fs)", shutdown.seconds_left())
            notifier.send("STOPPING=1")
        await _stop_tasks(producers, deadline)
        if next_config is None:
            # The pollers' last readings leave before the goodbye, not at the next start.
            last = min(_GOODBYE_MAX, deadline.seconds_left() / 2)
            await _bounded(forwarder.send_last(last), deadline, "the last readings to the broker")
            goodbye = min(_GOODBYE_MAX, deadline.seconds_left() / 2)
            await _bounded(forwarder.say_goodbye(goodbye), deadline, "the goodbye to the broker")
        await _stop_tasks({uplink}, deadline)
    return next_config, deadline


async def _unless_stopped(
    reading: Coroutine[Any, Any, GatewaySettings | None], stop: asyncio.Event
) -> GatewaySettings | None:
    """The config a reload reads, unless a stop comes first: then the reading is cancelled
    (its child ended) and the stop is not kept waiting for it."""
    task = asyncio.create_task(reading, name="reading the config")
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in (task, stopped):
            waiting.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
    return None if task.cancelled() else task.result()


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def _keep_running(part: _Part, stop: asyncio.Event, clock: Clock) -> None:
    """Run ``part`` until ``stop``; an exception that escapes it is logged (once per run of
    failures, with its traceback) and the part starts again after a capped, jittered backoff."""
    backoff = Backoff(base=1.0, cap=60.0)
    while not stop.is_set():
        try:
            await part.run()
        except Exception as exc:
            if backoff.failures == 0:
                log.exception(
                    "%s failed unexpectedly (a bug); it starts again, the rest goes on", part.name
                )
            else:
                log.debug("%s failed again: %r", part.name, exc)
        else:
            if stop.is_set():
                return
            backoff.succeeded()
            log.warning("%s ended by itself; it starts again", part.name)
        await clock.sleep(backoff.failed(clock.monotonic()))


async def _stop_tasks(tasks: set[asyncio.Task[None]], deadline: Deadline) -> None:
    """Cancel ``tasks`` and keep cancelling those still running until all are done or the bound
    is spent: one cancellation can be swallowed (see :mod:`gateway.scheduler`)."""
    pending = {task for task in tasks if not task.done()}
    while pending and deadline.seconds_left() > 0:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(
            pending, timeout=min(_RECANCEL_EVERY, deadline.seconds_left())
        )
    if pending:
        names = ", ".join(sorted(task.get_name() for task in pending))
        log.error("did not stop within the bound: %s", names)


async def _bounded(step: Awaitable[None], deadline: Deadline, what: str) -> None:
    """Run a step of the shutdown in what is left of the bound."""
    try:
        async with asyncio.timeout(deadline.seconds_left()):
            await step
    except TimeoutError:
        log.error(  # noqa: TRY400 - where it hung is in the message; a traceback adds nothing
            "%s did not finish within the stop bound; going on without it", what
        )
