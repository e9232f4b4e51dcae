"""A simulated RS-485 line: several slaves behind a pseudo-terminal, with real wire timing.

A client opens the pty's slave side (`SerialLine.path`) as a serial port. The relay moves bytes
between the pty's master side and a `MeterServer` speaking RTU over TCP, and holds every byte
for its time on the wire at the configured baud rate, in both directions over one shared,
half-duplex line: a pty alone ignores the baud rate and would carry ~100 times more reads a
second than a real 9600 baud line.

A pty rejects parity settings on this kernel (and pymodbus configures the port twice), so clients
open it as 8N1; `bits_per_char` times the line as 8E1 or 8N2 (11) where a test needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections.abc import Sequence
from types import TracebackType
from typing import Self

from fieldgate_sim.modbus_server import (
    Faults,
    MeterServer,
    SimulatedDevice,
    _LoopThread,
)

__all__ = ["RunningSerialLine", "SerialLine", "start_serial_line_in_thread"]

logger = logging.getLogger(__name__)

_READ_SIZE = 4096


class SerialLine:
    """Slaves on one simulated RS-485 line, inside an event loop you own."""

    def __init__(
        self, devices: Sequence[SimulatedDevice], baudrate: int = 9600, bits_per_char: int = 10
    ) -> None:
        if baudrate <= 0 or bits_per_char not in {10, 11}:
            raise ValueError("baudrate must be positive and bits_per_char 10 or 11")
        self.server = MeterServer(devices, framing="rtu")
        self.char_time = bits_per_char / baudrate
        self._master: int | None = None
        self._slave: int | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        self._line_free_at = 0.0
        #: Bytes carried each way, for bench figures.
        self.bytes_to_slaves = 0
        self.bytes_to_master = 0
        self.busy_s = 0.0

    @property
    def path(self) -> str:
        """The serial port a client opens."""
        if self._slave is None:
            raise RuntimeError("the line has not been started")
        return os.ttyname(self._slave)

    async def start(self) -> None:
        await self.server.start()
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        try:
            reader, self._writer = await asyncio.open_connection(self.server.host, self.server.port)
        except BaseException:
            await self.stop()
            raise
        loop = asyncio.get_running_loop()
        loop.add_reader(master, self._from_master)
        self._pump = asyncio.create_task(self._from_slaves(reader))

    async def stop(self) -> None:
        """Stop the relay, close both pty ends and the server; idempotent."""
        loop = asyncio.get_running_loop()
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
        if self._master is not None:
            loop.remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        await self.server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _on_wire(self, data: bytes, deliver: str) -> None:
        """Hold ``data`` for its time on the half-duplex line, then hand it on."""
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._line_free_at)
        duration = len(data) * self.char_time
        self._line_free_at = start + duration
        self.busy_s += duration
        handle: asyncio.TimerHandle

        def arrive() -> None:
            self._pending.discard(handle)
            if deliver == "slaves":
                if self._writer is not None:
                    self.bytes_to_slaves += len(data)
                    self._writer.write(data)
            elif self._master is not None:
                self.bytes_to_master += len(data)
                with contextlib.suppress(OSError):
                    os.write(self._master, data)

        handle = loop.call_at(self._line_free_at, arrive)
        self._pending.add(handle)

    def _from_master(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            # EIO: no client has the port open right now; bytes written meanwhile are lost,
            # as on a line nobody listens to.
            return
        if data:
            self._on_wire(data, "slaves")

    async def _from_slaves(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(_READ_SIZE):
            self._on_wire(data, "master")


class RunningSerialLine:
    """A `SerialLine` on a background thread; every method is thread-safe."""

    def __init__(self, line: SerialLine, loop_thread: _LoopThread) -> None:
        self._line = line
        self._loop_thread = loop_thread
        self._stopped = False
        loop_thread.acquire()

    @property
    def path(self) -> str:
        return self._line.path

    @property
    def char_time(self) -> float:
        return self._line.char_time

    @property
    def busy_s(self) -> float:
        """Seconds the line carried bytes so far."""
        return self._line.busy_s

    def set_faults(self, unit_id: int, faults: Faults | None) -> None:
        async def apply() -> None:
            self._line.server.set_faults(unit_id, faults)

        self._loop_thread.run(apply())

    def requests_received(self, unit_id: int) -> int:
        return self._line.server.requests_received.get(unit_id, 0)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._loop_thread.run(self._line.stop())
        finally:
            self._loop_thread.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_serial_line_in_thread(
    devices: Sequence[SimulatedDevice], baudrate: int = 9600, bits_per_char: int = 10
) -> RunningSerialLine:
    """Serve `devices` on a simulated RS-485 line (a pty) from a background thread."""
    line = SerialLine(devices, baudrate, bits_per_char)
    loop_thread = _LoopThread(f"fieldgate-sim line {baudrate}")
    try:
        loop_thread.run(line.start())
    except BaseException:
        loop_thread.close()
        raise
    return RunningSerialLine(line, loop_thread)
