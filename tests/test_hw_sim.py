"""hw-sim: the SDM630 model, and the simulated devices served by the real pymodbus server.

Server tests talk Modbus TCP over loopback with pymodbus's own client and decode registers with
struct, as the gateway's drivers do.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fieldgate_sim.modbus_server import (
    RegisterBank,
    RunningServer,
    Sdm630Meter,
    run_many_in_thread,
    start_in_thread,
)
from fieldgate_sim.sdm630 import (
    INPUT_BLOCK_SIZE,
    INPUT_REGISTERS,
    MAX_MODEL_TIME,
    REGISTERS_BY_NAME,
    Sdm630Model,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

HW_SIM_DIR = Path(__file__).resolve().parent.parent / "hw-sim"

METER_UNIT = 1
BANK_UNIT = 2
ENERGY_COUNTERS = (
    "import_active_energy",
    "export_active_energy",
    "import_reactive_energy",
    "export_reactive_energy",
    "total_active_energy",
    "total_reactive_energy",
)


def decode_floats(registers: list[int]) -> list[float]:
    """SDM630 floats: big-endian float32, high word first."""
    words = len(registers)
    return list(struct.unpack(f">{words // 2}f", struct.pack(f">{words}H", *registers)))


@asynccontextmanager
async def modbus_client(port: int, timeout: float = 3.0) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=timeout, retries=0)
    try:
        assert await client.connect()
        yield client
    finally:
        client.close()


async def read_input(client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
    response = await client.read_input_registers(address, count=count, device_id=METER_UNIT)
    assert not response.isError(), response
    return list(response.registers)


async def read_meter_value(client: AsyncModbusTcpClient, name: str) -> float:
    (value,) = decode_floats(await read_input(client, REGISTERS_BY_NAME[name].address, 2))
    return value


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with start_in_thread([Sdm630Meter(METER_UNIT), RegisterBank(BANK_UNIT)]) as running:
        yield running


# --- the real server over loopback ---------------------------------------------------------


async def test_sdm630_registers_decode_to_plausible_values(server: RunningServer) -> None:
    async with modbus_client(server.port) as client:
        # 0x0000..0x004F in one read, as a driver would poll the SDM630's main block.
        main_block = decode_floats(await read_input(client, 0x0000, 0x50))
        line_to_line = decode_floats(await read_input(client, 0x00C8, 6))

    def value(name: str) -> float:
        return main_block[REGISTERS_BY_NAME[name].address // 2]

    for phase in (1, 2, 3):
        assert 200.0 <= value(f"phase_{phase}_voltage") <= 260.0
        assert 0.0 <= value(f"phase_{phase}_current") <= 40.0
        assert 0.0 < value(f"phase_{phase}_power_factor") <= 1.0
        expected_power = (
            value(f"phase_{phase}_voltage")
            * value(f"phase_{phase}_current")
            * value(f"phase_{phase}_power_factor")
        )
        assert value(f"phase_{phase}_active_power") == pytest.approx(expected_power, rel=1e-5)
    assert 49.0 <= value("frequency") <= 51.0
    assert value("import_active_energy") > 0.0
    assert all(380.0 <= volts <= 420.0 for volts in line_to_line)


async def test_energy_counters_never_decrease_and_grow(server: RunningServer) -> None:
    # 0x0048..0x004F holds the four import/export counters, 0x0156..0x0159 the two totals.
    readings: list[dict[str, float]] = []
    async with modbus_client(server.port) as client:
        for _ in range(5):
            counters = decode_floats(await read_input(client, 0x0048, 8))
            totals = decode_floats(await read_input(client, 0x0156, 4))
            readings.append(dict(zip(ENERGY_COUNTERS, counters + totals, strict=True)))
            await asyncio.sleep(0.2)

    grown = set()
    for before, after in itertools.pairwise(readings):
        for name in ENERGY_COUNTERS:
            assert after[name] >= before[name], name
            if after[name] > before[name]:
                grown.add(name)
    assert "import_active_energy" in grown


async def test_register_bank_serves_what_a_test_sets(server: RunningServer) -> None:
    holding = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 12345]
    server.set_registers(BANK_UNIT, "holding", 100, holding)
    server.set_registers(BANK_UNIT, "input", 100, [7, 7, 7])
    served_before = server.requests_served

    async with modbus_client(server.port) as client:
        response = await client.read_holding_registers(100, count=len(holding), device_id=BANK_UNIT)
        assert not response.isError(), response
        assert response.registers == holding
        # Holding and input registers are separate tables.
        response = await client.read_input_registers(100, count=3, device_id=BANK_UNIT)
        assert not response.isError(), response
        assert response.registers == [7, 7, 7]
        response = await client.read_holding_registers(106, count=2, device_id=BANK_UNIT)
        assert response.registers == [0, 0]

    assert server.get_registers(BANK_UNIT, "holding", 100, len(holding)) == holding
    assert server.requests_served == served_before + 3
    with pytest.raises(ValueError, match="outside the table"):
        server.set_registers(BANK_UNIT, "holding", 255, [1, 2])


async def test_silent_unit_times_out_then_answers_again(server: RunningServer) -> None:
    async with modbus_client(server.port, timeout=0.3) as client:
        server.set_silent(True, BANK_UNIT)
        started = time.monotonic()
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=2, device_id=BANK_UNIT)
        assert time.monotonic() - started >= 0.25
        # The other meter behind the same "gateway" still answers.
        assert 200.0 <= await read_meter_value(client, "phase_1_voltage") <= 260.0

        server.set_silent(False, BANK_UNIT)
        response = await client.read_holding_registers(0, count=2, device_id=BANK_UNIT)
        assert not response.isError(), response

        server.set_silent(True)
        with pytest.raises(ModbusIOException):
            await read_meter_value(client, "phase_1_voltage")
        server.set_silent(False)
        assert 49.0 <= await read_meter_value(client, "frequency") <= 51.0


async def test_unit_id_not_served_is_silent_like_an_absent_slave(server: RunningServer) -> None:
    async with modbus_client(server.port, timeout=0.3) as client:
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(0, count=1, device_id=99)


async def test_run_many_in_thread_serves_a_meter_on_every_port() -> None:
    with run_many_in_thread(3) as fleet:
        assert len(set(fleet.ports)) == 3
        for port in fleet.ports:
            async with modbus_client(port) as client:
                assert 200.0 <= await read_meter_value(client, "phase_1_voltage") <= 260.0
        assert [server.requests_served for server in fleet] == [1, 1, 1]
    fleet.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", fleet.ports[0])


# --- the value model, pure ------------------------------------------------------------------


def test_model_covers_the_register_map_and_is_deterministic() -> None:
    model = Sdm630Model(seed=7)
    values = model.values_at(42.0)
    assert set(values) == {register.name for register in INPUT_REGISTERS}
    assert values == Sdm630Model(seed=7).values_at(42.0)
    assert values != Sdm630Model(seed=8).values_at(42.0)

    registers = model.registers_at(42.0)
    assert len(registers) == INPUT_BLOCK_SIZE
    mapped = {r.address + word for r in INPUT_REGISTERS for word in (0, 1)}
    assert all(registers[a] == 0 for a in range(INPUT_BLOCK_SIZE) if a not in mapped)
    frequency = REGISTERS_BY_NAME["frequency"].address
    assert decode_floats(registers[frequency : frequency + 2])[0] == pytest.approx(
        values["frequency"], rel=1e-6
    )


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    start=st.floats(min_value=0.0, max_value=MAX_MODEL_TIME),
    steps=st.lists(
        st.one_of(
            st.floats(min_value=0.0, max_value=1e-3),
            st.floats(min_value=0.0, max_value=60.0),
            st.floats(min_value=0.0, max_value=1e7),
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_model_energy_counters_are_monotonic_in_time(
    seed: int, start: float, steps: list[float]
) -> None:
    model = Sdm630Model(seed)
    times = [min(t, MAX_MODEL_TIME) for t in itertools.accumulate(steps, initial=start)]
    previous: dict[str, float] | None = None
    previous_wire: list[float] | None = None
    for t in times:
        values = model.values_at(t)
        registers = model.registers_at(t)
        wire = [
            decode_floats(registers[a : a + 2])[0]
            for a in (REGISTERS_BY_NAME[name].address for name in ENERGY_COUNTERS)
        ]
        assert all(values[name] > 0.0 for name in ENERGY_COUNTERS)
        if previous is not None and previous_wire is not None:
            for name in ENERGY_COUNTERS:
                assert values[name] >= previous[name], (name, t)
            assert all(now >= before for now, before in zip(wire, previous_wire, strict=True))
        previous, previous_wire = values, wire


# --- the command line ------------------------------------------------------------------------


async def test_cli_serves_until_sigterm_and_exits_zero() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HW_SIM_DIR), env.get("PYTHONPATH", "")) if p
    )
    # Port 0: the kernel picks a free port and the CLI prints it, so there is no port race.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fieldgate_sim",
        "modbus-tcp",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=15)).decode()
        match = re.fullmatch(r"serving SDM630 unit 1 on 127\.0\.0\.1:(\d+)\n", line)
        assert match is not None, line

        async with modbus_client(int(match[1])) as client:
            assert 200.0 <= await read_meter_value(client, "phase_1_voltage") <= 260.0

        os.kill(process.pid, signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=5)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
