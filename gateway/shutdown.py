"""Stopping on SIGTERM/SIGINT at any moment, within a bound, by design.

The request is caught from the first moment the CLI runs (a plain signal handler that only
records it), handed to the event loop once it runs, and from then on every loop of the gateway
sees it: pollers check a stop flag around every await, the service cancels and re-cancels its
tasks until each is done, and every step of the shutdown runs under the same deadline.

Cooperation is not enough on its own: a driver that blocks the event loop, or a disk that hangs
a thread SQLite waits on, would hold the process forever. So the request also arms a last-resort
timer on its own thread: when the bound has passed and the process is still alive, it says so on
stderr and exits with ``EX_SOFTWARE``. Nothing is lost by that: a reading counts as stored only
once it is committed, and committed rows survive any exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Protocol

log = logging.getLogger(__name__)

#: sysexits.h EX_SOFTWARE: the gateway did not stop within its bound and was ended hard.
EX_SOFTWARE = 70

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Deadline(Protocol):
    """What is left of a time budget: what every step of taking the parts down runs under."""

    def seconds_left(self) -> float: ...


class Budget:
    """A budget of ``seconds`` from now (for a reload, which has no stop request)."""

    def __init__(self, seconds: float) -> None:
        self._ends = time.monotonic() + seconds

    def seconds_left(self) -> float:
        return max(0.0, self._ends - time.monotonic())


class ShutdownRequest:
    """Catches the stop signals and turns them into an :class:`asyncio.Event` for the loop."""

    def __init__(self, *, end_hard: bool = False) -> None:
        #: Seconds from the request to the end of the process; known once the config is read.
        self.bound: float | None = None
        #: Whether to arm the last-resort timer: for the process that runs the gateway (the
        #: CLI), not for a gateway run inside a test process that lives on after it.
        self._end_hard = end_hard
        self._installed = False
        self._requested = threading.Event()
        self._requested_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._guard: threading.Timer | None = None
        #: Set on SIGHUP while the loop runs: the service reloads its config file.
        self.reload = asyncio.Event()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    def install(self) -> None:
        """Catch the signals now, before the event loop exists (call it first thing)."""
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)
        # SIGHUP's default action ends the process: before the loop runs there is nothing to
        # reload yet, so it is noted and ignored.
        signal.signal(signal.SIGHUP, self._on_early_hangup)
        self._installed = True

    def set_bound(self, seconds: float) -> None:
        self.bound = seconds
        if self._requested.is_set():
            self._arm_guard()

    def attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """Hand the signals to ``loop``; the event is set on the (first) request, also one that
        arrived before this call."""
        self._loop = loop
        self._event = asyncio.Event()
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, self._signalled)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if self._requested.is_set():
            self._event.set()
        return self._event

    def detach(self) -> None:
        """Back to the plain handlers: removing the loop's handlers would restore the default
        action, and a SIGTERM while the process exits would then kill it with no exit code."""
        if self._loop is not None:
            for signum in (*_SIGNALS, signal.SIGHUP):
                with contextlib.suppress(RuntimeError, ValueError):
                    self._loop.remove_signal_handler(signum)
            self._loop = None
            self._event = None
        if self._installed:
            self.install()

    def seconds_left(self) -> float:
        """Of the bound, what the orderly shutdown has left since the request (all of it if
        none yet). A margin is kept back for the interpreter's own exit, so that an orderly
        shutdown that uses its whole budget still ends before the last-resort timer fires."""
        bound = self.bound if self.bound is not None else 0.0
        budget = bound - min(1.0, bound / 4)
        if self._requested_at is None:
            return budget
        return max(0.0, budget - (time.monotonic() - self._requested_at))

    def seconds_since_request(self) -> float | None:
        if self._requested_at is None:
            return None
        return time.monotonic() - self._requested_at

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self._signalled()

    def _on_early_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        log.info("SIGHUP before the gateway runs: nothing to reload yet")

    def request_reload(self) -> None:
        """What SIGHUP does while the loop runs."""
        log.info("SIGHUP: reloading the config")
        self.reload.set()

    def _signalled(self) -> None:
        if self._requested.is_set():
            log.info("already stopping; the process ends within %.1fs", self.seconds_left())
        self.request()

    def request(self) -> None:
        """Stop: what a signal does, also for a stop for any other reason (the bound starts)."""
        if self._requested.is_set():
            return
        self._requested_at = time.monotonic()
        self._requested.set()
        if self._event is not None:
            self._event.set()
        self._arm_guard()

    def _arm_guard(self) -> None:
        if not self._end_hard or self.bound is None or self._guard is not None:
            return
        assert self._requested_at is not None
        fire_in = self.bound - (time.monotonic() - self._requested_at)
        self._guard = threading.Timer(max(0.0, fire_in), _end_hard, args=(self.bound,))
        # A daemon thread: it never keeps the process alive, it only ends one that lives on.
        self._guard.daemon = True
        self._guard.start()


def _end_hard(bound: float) -> None:
    # Logging may be what hangs (a blocked stderr pipe is one way to stall a process), so write
    # once, directly, and never wait on it.
    with contextlib.suppress(OSError):
        os.write(
            sys.stderr.fileno(),
            f"CRITICAL gateway.shutdown: did not stop within {bound:g}s of the stop signal; "
            "ending now (everything stored is safe in the buffer)\n".encode(),
        )
    os._exit(EX_SOFTWARE)
