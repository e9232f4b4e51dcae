"""Serve simulated field devices over Modbus TCP, using pymodbus's simulator API.

Several unit ids on one port behave like a TCP-to-RS485 gateway with meters behind it. A unit id
that is not served, or that a test has made silent, never answers, so a client times out exactly
as it does for an absent slave on a real bus (pymodbus itself would answer an exception instead).

`MeterServer` runs inside an event loop you own; `start_in_thread` and `run_many_in_thread` run
servers on a background loop for synchronous tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Literal, Self, TypeVar

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from fieldgate_sim.sdm630 import MAX_MODEL_TIME, Sdm630Model

__all__ = [
    "Faults",
    "MeterServer",
    "RegisterBank",
    "RunningServer",
    "Sdm630Meter",
    "ServerFleet",
    "SimulatedDevice",
    "Table",
    "run_many_in_thread",
    "start_in_thread",
]

logger = logging.getLogger(__name__)

Table = Literal["holding", "input"]

_T = TypeVar("_T")

_TABLE_FUNCTION_CODE: dict[str, int] = {"holding": 3, "input": 4}
_FUNCTION_CODE_TABLE: dict[int, Table] = {3: "holding", 4: "input"}
_BIT_FUNCTION_CODE_TABLE: dict[int, str] = {1: "coil", 2: "discrete_input"}


def _crc(data: bytes) -> bytes:
    """Modbus RTU CRC-16, low byte first (written here, apart from the driver's)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


_READ_FUNCTION_CODES = frozenset({1, 2, 3, 4})
# Modbus TCP (MBAP) frame: transaction id (2), protocol id (2), length (2), unit id, function code.
_MBAP_UNIT_ID = 6
_MBAP_FUNCTION_CODE = 7
_CALL_TIMEOUT_S = 10.0
_BIT_TABLE_SIZE = 16


def _bit_table(values: list[bool] | None = None) -> list[SimData]:
    # pymodbus requires all four tables in non-shared mode.
    if not values:
        return [SimData(address=0, count=_BIT_TABLE_SIZE, values=False, datatype=DataType.BITS)]
    return [SimData(address=0, values=values, datatype=DataType.BITS)]


Framing = Literal["mbap", "rtu"]


@dataclass
class Faults:
    """What one simulated slave does wrong. Set with `MeterServer.set_faults`; every field is
    independent. Faults act on the answer as it leaves the server, as a broken meter or a noisy
    line would."""

    #: Never answer (an absent or unpowered slave).
    silent: bool = False
    #: Seconds to wait before answering (a slow meter; longer than the client's timeout makes
    #: its answers arrive late, after the client gave up).
    delay_s: float = 0.0
    #: (table, first, last) address ranges answered with exception 2 (illegal data address).
    refuse: list[tuple[str, int, int]] = field(default_factory=list)
    #: Exception code answered to every request (5 acknowledge, 6 busy ...), or None.
    exception_code: int | None = None
    #: Fraction of answers whose last byte is corrupted (RTU: the CRC no longer matches).
    corrupt_rate: float = 0.0
    #: Answer with another function code.
    wrong_function_code: bool = False
    #: Send only the first half of the answer.
    truncate: bool = False
    #: Answer with MBAP transaction id 0 (Modbus TCP only).
    zero_transaction_id: bool = False
    #: Send bytes that are no frame at all instead of the answer.
    garbage: bool = False
    #: Close the client's connection instead of answering.
    disconnect: bool = False
    seed: int = 0


def _register_table(values: list[int]) -> list[SimData]:
    return [SimData(address=0, values=values, datatype=DataType.REGISTERS)]


def _check_register_values(values: Sequence[int], what: str) -> list[int]:
    checked = list(values)
    for value in checked:
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise ValueError(f"{what}: {value!r} is not a 16-bit register value")
    return checked


def _check_table(table: str) -> Table:
    if table == "holding":
        return "holding"
    if table == "input":
        return "input"
    raise ValueError(f"table must be 'holding' or 'input', got {table!r}")


class _PerConnectionTraceServer(ModbusTcpServer):
    """Gives the trace hook the connection a frame belongs to (pymodbus's hook gets only the
    bytes), so a fault can hold an answer back and send it later on that connection, or close
    just that connection."""

    def __init__(
        self,
        *args: Any,
        trace: Callable[[ServerRequestHandler, bool, bytes], bytes],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._trace = trace

    def callback_new_connection(self) -> ServerRequestHandler:
        handler = ServerRequestHandler(self, None, self.trace_pdu, self.trace_connect)  # type: ignore[no-untyped-call]
        handler.trace_packet = functools.partial(self._trace, handler)
        return handler


class SimulatedDevice(ABC):
    """A device a `MeterServer` serves under one unit id."""

    #: Human-readable kind, as the CLI prints it.
    kind: ClassVar[str]

    def __init__(self, unit_id: int) -> None:
        # Unit 0 is the RS485 broadcast address, and pymodbus uses id 0 as its catch-all.
        if not 1 <= unit_id <= 255:
            raise ValueError(f"unit_id must be within 1..255, got {unit_id}")
        self.unit_id = unit_id
        #: Seconds between a request and its answer: a real meter takes a few milliseconds
        #: (`MeterServer.set_reply_delay`). Unlike `Faults.delay_s` it is no fault.
        self.reply_delay_s = 0.0

    @abstractmethod
    def initial_registers(self) -> tuple[list[int], list[int]]:
        """(holding, input) register tables as served from address 0 when the server starts."""

    def initial_bits(self) -> tuple[list[bool], list[bool]]:
        """(coils, discrete inputs) as served from address 0; none by default."""
        return [], []

    @abstractmethod
    def refresh(
        self,
        table: Table,
        registers: list[int],
        *,
        start_address: int,
        address: int,
        count: int,
        elapsed_s: float,
    ) -> None:
        """Update `registers` (the served table, modified in place) before a read is answered.

        `registers[0]` is at `start_address`; the read covers `address`..`address + count - 1`;
        `elapsed_s` is the time since the server started.
        """


class Sdm630Meter(SimulatedDevice):
    """An Eastron SDM630 whose input registers follow `Sdm630Model` at the time of each read."""

    kind = "SDM630"
    HOLDING_SIZE = 16

    def __init__(self, unit_id: int, seed: int | None = None) -> None:
        super().__init__(unit_id)
        self.seed = unit_id if seed is None else seed
        self.model = Sdm630Model(self.seed)

    def initial_registers(self) -> tuple[list[int], list[int]]:
        return [0] * self.HOLDING_SIZE, self.model.registers_at(0.0)

    def refresh(
        self,
        table: Table,
        registers: list[int],
        *,
        start_address: int,
        address: int,
        count: int,
        elapsed_s: float,
    ) -> None:
        if table != "input":
            return
        block = self.model.registers_at(min(elapsed_s, MAX_MODEL_TIME))
        offset = address - start_address
        registers[offset : offset + count] = block[address : address + count]


class RegisterBank(SimulatedDevice):
    """Static holding and input registers 0..size-1 that only a test (or a client write) changes."""

    kind = "register bank"

    def __init__(
        self,
        unit_id: int,
        holding: list[int] | None = None,
        input: list[int] | None = None,
        size: int = 256,
        *,
        coils: list[bool] | None = None,
        discrete_inputs: list[bool] | None = None,
    ) -> None:
        super().__init__(unit_id)
        self._coils = list(coils or [])
        self._discrete_inputs = list(discrete_inputs or [])
        if not 1 <= size <= 0xFFFF:
            raise ValueError(f"size must be within 1..65535, got {size}")
        self.size = size
        self._holding = self._padded(holding or [], "holding")
        self._input = self._padded(input or [], "input")

    def _padded(self, values: list[int], table: str) -> list[int]:
        if len(values) > self.size:
            raise ValueError(f"{table}: {len(values)} values do not fit in {self.size} registers")
        checked = _check_register_values(values, table)
        return checked + [0] * (self.size - len(checked))

    def initial_registers(self) -> tuple[list[int], list[int]]:
        return list(self._holding), list(self._input)

    def initial_bits(self) -> tuple[list[bool], list[bool]]:
        return list(self._coils), list(self._discrete_inputs)

    def refresh(
        self,
        table: Table,
        registers: list[int],
        *,
        start_address: int,
        address: int,
        count: int,
        elapsed_s: float,
    ) -> None:
        """Nothing moves: a bank serves what it was given or what was last written."""


class MeterServer:
    """Simulated devices on one Modbus TCP port, for use inside a running event loop.

    With port=0 the kernel picks a free port when `start` binds; `port` tells which. Binding 0
    directly (rather than probing for a free port first) leaves no window for another process to
    take the port. Port 0 is meant for a single-address host such as 127.0.0.1.
    """

    def __init__(
        self,
        devices: Sequence[SimulatedDevice],
        host: str = "127.0.0.1",
        port: int = 0,
        framing: Framing = "mbap",
    ) -> None:
        if not devices:
            raise ValueError("a MeterServer needs at least one device")
        self._devices: dict[int, SimulatedDevice] = {}
        for device in devices:
            if device.unit_id in self._devices:
                raise ValueError(f"unit id {device.unit_id} is served twice")
            self._devices[device.unit_id] = device
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: ModbusTcpServer | None = None
        self._t0 = 0.0
        self._silent_all = False
        self._silent_units: set[int] = set()
        self._requests_served = 0
        self._framing: Framing = framing
        self._faults: dict[int, Faults] = {}
        self._random: dict[int, random.Random] = {}
        #: Requests received per unit id (whatever became of them), for tests and bench.
        self.requests_received: dict[int, int] = {}

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The bound port; only known once `start` has returned."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def devices(self) -> tuple[SimulatedDevice, ...]:
        return tuple(self._devices.values())

    @property
    def requests_served(self) -> int:
        """Read requests (function codes 1-4) answered without an exception."""
        return self._requests_served

    async def start(self) -> None:
        """Bind and start serving; connections are accepted as soon as this returns."""
        if self._server is not None:
            raise RuntimeError("the server is already running")
        sim_devices = [self._sim_device(device) for device in self._devices.values()]
        # Requests to unknown unit ids land on this catch-all (pymodbus would otherwise log a
        # KeyError traceback for each); its answers are dropped in _trace_packet.
        sim_devices.append(
            SimDevice(
                id=0,
                simdata=(_bit_table(), _bit_table(), _register_table([0]), _register_table([0])),
            )
        )
        server = _PerConnectionTraceServer(
            sim_devices,
            address=(self._host, self._requested_port),
            framer=FramerType.RTU if self._framing == "rtu" else FramerType.SOCKET,
            trace=self._trace_packet,
        )
        self._t0 = time.monotonic()
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(
                f"cannot listen on {self._host}:{self._requested_port} (in use or unavailable)"
            ) from exc
        try:
            self._port = self._bound_port(server)
        except RuntimeError:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
            raise
        self._server = server
        logger.info("serving unit ids %s on %s:%d", sorted(self._devices), self._host, self._port)

    async def stop(self) -> None:
        """Close the listener and every client connection; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
        logger.info("stopped serving on %s:%s", self._host, self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def set_silent(self, silent: bool, unit_id: int | None = None) -> None:
        """Make one unit id (or, with None, every one) stop answering, or answer again.

        Call from the server's event loop.
        """
        if unit_id is None:
            self._silent_all = silent
            self._silent_units.clear()
            return
        self._check_unit(unit_id)
        if silent:
            self._silent_units.add(unit_id)
        elif self._silent_all:
            self._silent_all = False
            self._silent_units = set(self._devices) - {unit_id}
        else:
            self._silent_units.discard(unit_id)

    async def set_registers(
        self, unit_id: int, table: Table, address: int, values: list[int]
    ) -> None:
        """Overwrite registers of a device's table, as served from now on."""
        self._check_unit(unit_id)
        checked_table = _check_table(table)
        checked = _check_register_values(values, checked_table)
        if not checked:
            raise ValueError("values must not be empty")
        try:
            await self._running().async_setValues(
                unit_id, _TABLE_FUNCTION_CODE[checked_table], address, checked
            )
        except TypeError as exc:
            raise ValueError(
                f"unit {unit_id} {checked_table} registers {address}..{address + len(checked) - 1}"
                " are outside the table"
            ) from exc

    async def get_registers(
        self, unit_id: int, table: Table, address: int, count: int
    ) -> list[int]:
        """Registers of a device's table as a read would serve them now."""
        self._check_unit(unit_id)
        checked_table = _check_table(table)
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        try:
            values = await self._running().async_getValues(
                unit_id, _TABLE_FUNCTION_CODE[checked_table], address, count
            )
        except TypeError as exc:
            raise ValueError(
                f"unit {unit_id} {checked_table} registers {address}..{address + count - 1}"
                " are outside the table"
            ) from exc
        return [int(value) for value in values]

    def _running(self) -> ModbusTcpServer:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server

    def _check_unit(self, unit_id: int) -> None:
        if unit_id not in self._devices:
            raise ValueError(
                f"unit id {unit_id} is not served here (serving {sorted(self._devices)})"
            )

    def set_faults(self, unit_id: int, faults: Faults | None) -> None:
        """Give one unit id these faults (None: none). Call from the server's event loop."""
        self._check_unit(unit_id)
        if faults is None:
            self._faults.pop(unit_id, None)
            return
        self._faults[unit_id] = faults
        self._random[unit_id] = random.Random(faults.seed)  # noqa: S311 - simulated line noise

    def _is_silent(self, unit_id: int) -> bool:
        faults = self._faults.get(unit_id)
        return (
            self._silent_all
            or unit_id in self._silent_units
            or (faults is not None and faults.silent)
        )

    def _sim_device(self, device: SimulatedDevice) -> SimDevice:
        holding, input_registers = device.initial_registers()

        async def action(  # noqa: PLR0917 - the signature pymodbus calls
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            current_registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if set_values is not None:
                # Clients cannot write with a read function code: this is set_registers.
                if function_code in _READ_FUNCTION_CODES:
                    return None
                # An absent slave never receives the write; its (exception) answer is dropped.
                return ExcCodes.DEVICE_FAILURE if self._is_silent(device.unit_id) else None
            table = _FUNCTION_CODE_TABLE.get(function_code)
            faults = self._faults.get(device.unit_id)
            if faults is not None:
                if faults.exception_code is not None:
                    return ExcCodes(faults.exception_code)
                fault_table = _BIT_FUNCTION_CODE_TABLE.get(function_code, table)
                for refused_table, first, last in faults.refuse:
                    if refused_table == fault_table and address <= last and address + count > first:
                        return ExcCodes.ILLEGAL_ADDRESS
            if table is not None:
                device.refresh(
                    table,
                    current_registers,
                    start_address=start_address,
                    address=address,
                    count=count,
                    elapsed_s=time.monotonic() - self._t0,
                )
            return None

        coils, discrete_inputs = device.initial_bits()
        return SimDevice(
            id=device.unit_id,
            simdata=(
                _bit_table(coils),
                _bit_table(discrete_inputs),
                _register_table(holding),
                _register_table(input_registers),
            ),
            action=action,
        )

    def _trace_packet(self, connection: ServerRequestHandler, sending: bool, data: bytes) -> bytes:
        # Frames are dropped on the way out, not on the way in: for a received frame b"" makes
        # pymodbus consume nothing, so the request would stay buffered and be answered later.
        unit_at, code_at = (
            (0, 1) if self._framing == "rtu" else (_MBAP_UNIT_ID, _MBAP_FUNCTION_CODE)
        )
        if len(data) <= code_at:
            return data
        unit_id = data[unit_at]
        if not sending:
            self.requests_received[unit_id] = self.requests_received.get(unit_id, 0) + 1
            return data
        if unit_id not in self._devices or self._is_silent(unit_id):
            return b""
        faults = self._faults.get(unit_id)
        if faults is not None:
            data = self._faulty(connection, unit_id, faults, data, code_at)
        elif data[code_at] in _READ_FUNCTION_CODES:
            self._requests_served += 1
        delay = self._devices[unit_id].reply_delay_s
        if data and delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send_late, connection, data)
            return b""
        return data

    def set_reply_delay(self, unit_id: int, seconds: float) -> None:
        """Answer ``unit_id``'s requests ``seconds`` after they arrive, as a real meter does
        (a few milliseconds). Call from the server's event loop."""
        self._check_unit(unit_id)
        if not 0 <= seconds <= 60:
            raise ValueError(f"a reply delay is 0..60 s, got {seconds}")
        self._devices[unit_id].reply_delay_s = seconds

    def _faulty(
        self,
        connection: ServerRequestHandler,
        unit_id: int,
        faults: Faults,
        data: bytes,
        code_at: int,
    ) -> bytes:
        rtu = self._framing == "rtu"
        frame = bytearray(data)
        if faults.disconnect:
            asyncio.get_running_loop().call_soon(connection.close)
            return b""
        if faults.garbage:
            return bytes([0xDE, 0xAD, 0xBE, 0xEF, 0x00, 0x01, 0x02])
        if faults.wrong_function_code:
            frame[code_at] = 0x11 if frame[code_at] != 0x11 else 0x03
        if faults.zero_transaction_id and not rtu:
            frame[0:2] = b"\x00\x00"
        if rtu and (faults.wrong_function_code):
            frame[-2:] = _crc(bytes(frame[:-2]))
        if faults.truncate:
            frame = frame[: max(1, len(frame) // 2)]
        if faults.corrupt_rate and self._random[unit_id].random() < faults.corrupt_rate:
            frame[-1] ^= 0xFF
        if frame[code_at] in _READ_FUNCTION_CODES and bytes(frame) == data:
            self._requests_served += 1
        if faults.delay_s:
            # Held back and sent on its own connection later, as a slow meter does (pymodbus's
            # own handler would stamp a delayed answer with the next request's transaction id).
            asyncio.get_running_loop().call_later(
                faults.delay_s, self._send_late, connection, bytes(frame)
            )
            return b""
        return bytes(frame)

    @staticmethod
    def _send_late(connection: ServerRequestHandler, frame: bytes) -> None:
        if connection.transport is not None:
            connection.transport.write(frame)  # type: ignore[attr-defined]

    @staticmethod
    def _bound_port(server: ModbusTcpServer) -> int:
        listener: object = server.transport
        if isinstance(listener, asyncio.Server) and listener.sockets:
            port: int = listener.sockets[0].getsockname()[1]
            return port
        raise RuntimeError("pymodbus did not expose its listening socket")


class _LoopThread:
    """An event loop in a background thread, shared by the servers started on it.

    It stops when the last server using it is released.
    """

    def __init__(self, name: str) -> None:
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        # asyncio.run cancels leftover tasks and closes the loop, so nothing leaks between tests.
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._ready.set()
        await self._stop_event.wait()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = _CALL_TIMEOUT_S) -> _T:
        """Run `coro` on the loop and wait for its result."""
        if self._closed or self._loop is None:
            coro.close()
            raise RuntimeError("the server thread has stopped")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def acquire(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join()


class RunningServer:
    """A `MeterServer` running on a background thread; every method is thread-safe."""

    def __init__(self, server: MeterServer, loop_thread: _LoopThread) -> None:
        self._server = server
        self._loop_thread = loop_thread
        self._stop_lock = threading.Lock()
        self._stopped = False
        loop_thread.acquire()

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def requests_served(self) -> int:
        """Read requests answered so far (an int read is atomic, so no lock is needed)."""
        return self._server.requests_served

    def set_silent(self, silent: bool, unit_id: int | None = None) -> None:
        """Drop the answers of `unit_id` (or of every unit); takes effect before this returns."""

        async def apply() -> None:
            self._server.set_silent(silent, unit_id)

        self._loop_thread.run(apply())

    def set_faults(self, unit_id: int, faults: Faults | None) -> None:
        """Give `unit_id` these faults (None: none); takes effect before this returns."""

        async def apply() -> None:
            self._server.set_faults(unit_id, faults)

        self._loop_thread.run(apply())

    def set_reply_delay(self, unit_id: int, seconds: float) -> None:
        """Answer `unit_id` after `seconds`; takes effect before this returns."""

        async def apply() -> None:
            self._server.set_reply_delay(unit_id, seconds)

        self._loop_thread.run(apply())

    def requests_received(self, unit_id: int) -> int:
        """Requests that reached the server for `unit_id` so far."""
        return self._server.requests_received.get(unit_id, 0)

    def set_registers(self, unit_id: int, table: Table, address: int, values: list[int]) -> None:
        self._loop_thread.run(self._server.set_registers(unit_id, table, address, values))

    def get_registers(self, unit_id: int, table: Table, address: int, count: int) -> list[int]:
        return self._loop_thread.run(self._server.get_registers(unit_id, table, address, count))

    def stop(self) -> None:
        """Stop serving and, if no other server shares it, join the thread; idempotent."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._loop_thread.run(self._server.stop())
        finally:
            self._loop_thread.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class ServerFleet:
    """Servers sharing one background thread, as returned by `run_many_in_thread`."""

    def __init__(self, servers: Sequence[RunningServer]) -> None:
        self.servers = tuple(servers)

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[RunningServer]:
        return iter(self.servers)

    def __getitem__(self, index: int) -> RunningServer:
        return self.servers[index]

    def stop(self) -> None:
        """Stop every server, then the thread; idempotent."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    devices: Sequence[SimulatedDevice],
    host: str = "127.0.0.1",
    port: int = 0,
    framing: Framing = "mbap",
) -> RunningServer:
    """Serve `devices` on one port from a background thread; port=0 picks a free port.
    framing="rtu" serves RTU frames over TCP (a serial device server in transparent mode)."""
    server = MeterServer(devices, host, port, framing)
    loop_thread = _LoopThread(f"fieldgate-sim {host}:{port}")
    try:
        loop_thread.run(server.start())
    except BaseException:
        loop_thread.close()
        raise
    return RunningServer(server, loop_thread)


def run_many_in_thread(count: int, host: str = "127.0.0.1") -> ServerFleet:
    """`count` SDM630s (unit 1, seeds 1..count), each on its own free port, on one thread."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    servers = [MeterServer([Sdm630Meter(1, seed=n + 1)], host, 0) for n in range(count)]

    async def start_all() -> None:
        try:
            for server in servers:
                await server.start()
        except BaseException:
            for server in servers:
                await server.stop()
            raise

    loop_thread = _LoopThread(f"fieldgate-sim x{count}")
    try:
        loop_thread.run(start_all())
    except BaseException:
        loop_thread.close()
        raise
    return ServerFleet([RunningServer(server, loop_thread) for server in servers])
