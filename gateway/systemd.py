"""Telling systemd the truth (``Type=notify``): ``READY=1`` once polling has started,
``WATCHDOG=1`` only while the gateway makes progress, ``STATUS=`` a line a person can read in
``systemctl status``, ``STOPPING=1`` on the way out.

The watchdog is the part that matters: systemd restarts a process whose pings stop. A ping is
earned, not sent on a timer: since the last one, a reading must have entered the sink, or the
buffer's thread must have answered a probe (devices may all be down, which a restart cannot
fix; a stuck disk or SQLite can be). The check runs on the event loop, so a blocked loop sends
nothing at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.health import HealthRegistry

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify(3) without libsystemd: one datagram per state to ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading "@".
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._failed_once = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, state: str) -> None:
        if not self._address:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect(self._address)
                sock.sendall(state.encode())
            except OSError as exc:
                if not self._failed_once:
                    log.warning("cannot notify systemd at %s: %s", self._address, exc)
                self._failed_once = True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between the pings systemd expects (``WatchdogSec=``), or ``None`` when the
    watchdog is off or meant for another process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


@dataclass(slots=True)
class WatchdogState:
    """What the last check saw, to tell progress since then."""

    readings_stored: int = 0


def earned_ping(state: WatchdogState, readings_stored: int, buffer_answered: bool) -> bool:
    """Whether the gateway made progress since the last check (and remember this one)."""
    progressed = readings_stored > state.readings_stored
    state.readings_stored = readings_stored
    return progressed or buffer_answered


async def report_to_systemd(
    notifier: Notifier,
    health: HealthRegistry,
    probe_buffer: Callable[[], Awaitable[None]],
    period: float | None,
    stop: asyncio.Event,
) -> None:
    """Until ``stop``: ping the watchdog when earned, and keep ``STATUS=`` current. Checks twice
    per watchdog period (as sd_watchdog_enabled(3) advises), or every 5 s without a watchdog."""
    tick = period / 2 if period is not None else 5.0
    state = WatchdogState(health.progress.readings_stored)
    last_status = ""
    while not stop.is_set():
        await asyncio.sleep(tick)
        if period is not None:
            answered = await _answers(probe_buffer, timeout=tick / 2)
            if earned_ping(state, health.progress.readings_stored, answered):
                notifier.send("WATCHDOG=1")
        status = health.status_line()
        if status != last_status:
            notifier.send(f"STATUS={status}")
            last_status = status


async def _answers(probe: Callable[[], Awaitable[None]], timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await probe()
    except TimeoutError:
        return False
    except Exception:  # noqa: BLE001 - a buffer that fails its probe has not answered
        return False
    return True
