"""The supervisor: opens the buffer and the buses, and owns every long-running task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from drivers.catalog import bus_driver_factory
from gateway.buffer import Buffer
from gateway.clock import Clock, SystemClock
from gateway.config.model import GatewayConfig
from gateway.driver import PolledDevice
from gateway.scheduler import DevicePoller
from gateway.uplink import Uplink

log = logging.getLogger(__name__)


async def run_gateway(config: GatewayConfig, clock: Clock | None = None) -> None:
    """Run until SIGTERM or SIGINT (or cancellation), then shut down cleanly."""
    clock = clock or SystemClock()
    buffer = await Buffer.open(config.buffer.path, config.buffer.max_size, config.buffer.max_age)
    try:
        async with contextlib.AsyncExitStack() as buses:
            devices: dict[str, PolledDevice] = {}
            for bus_config in config.buses:
                factory = bus_driver_factory(bus_config.type)
                bus = await buses.enter_async_context(
                    factory(bus_config, config.devices_on(bus_config.name), clock)
                )
                devices.update((device.name, device) for device in bus.devices)
            pollers = [
                DevicePoller(devices[device.name], device.interval, buffer, clock)
                for device in config.devices
            ]
            uplink = Uplink(config.mqtt, config.gateway.id, buffer, clock)
            await _serve(pollers, uplink)
    finally:
        await buffer.close()


async def _serve(pollers: list[DevicePoller], uplink: Uplink) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        # A task that fails unexpectedly cancels the others and the exception propagates: the
        # process exits non-zero and systemd restarts it, with the buffer intact on disk.
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(poller.run(), name=f"poll {poller.device.name}")
                for poller in pollers
            ]
            tasks.append(group.create_task(uplink.run(), name="uplink"))
            log.info("fieldgate running: %d device(s)", len(pollers))
            notify_systemd("READY=1")
            await stop.wait()
            log.info("stopping")
            notify_systemd("STOPPING=1")
            await uplink.close()
            for task in tasks:
                task.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def notify_systemd(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op when not started by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
