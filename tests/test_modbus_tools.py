"""`fieldgate scan`, `probe` and `templates`, run as a technician runs them, against hw-sim on a
simulated RS-485 line and over Modbus TCP."""

from __future__ import annotations

import asyncio
import re
import signal
import struct
import sys

import pytest
from fieldgate_sim.modbus_server import Faults, RegisterBank, start_in_thread
from fieldgate_sim.serial_line import start_serial_line_in_thread

from drivers.modbus.config import ModbusDevice, ModbusRtuOverTcpBus
from drivers.modbus.tcp import open_modbus_rtu_over_tcp_bus
from drivers.modbus.tools import probe_rows
from gateway.clock import SystemClock
from gateway.config.handover import settings_of
from gateway.errors import DeviceProtocolError
from tests.harness import REPO, run_fieldgate


def test_scan_finds_the_units_on_a_line_and_identifies_known_meters():
    sunspec = RegisterBank(4, holding=[0] * 40000 + [0x5375, 0x6E53], size=40002)
    with start_serial_line_in_thread(
        [RegisterBank(1), RegisterBank(2), RegisterBank(3), sunspec], baudrate=19200
    ) as line:
        line.set_faults(3, Faults(silent=True))
        result = run_fieldgate(
            "scan", "--serial", line.path, "--baud", "19200", "--units", "1-6", "--timeout", "100ms"
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "3 unit(s) answer" in lines[0]
    units = {line.split()[0]: line.split()[-1] for line in lines[2:]}
    assert units == {"1": "-", "2": "-", "4": "sunspec-inverter-float"}


def test_probe_shows_every_type_and_byte_order():
    words = list(struct.unpack(">2H", struct.pack(">f", 229.01)))
    with start_in_thread([RegisterBank(1, holding=[*words, 0xFFFF])]) as meter:
        result = run_fieldgate(
            "probe", "--host", "127.0.0.1", "--port", str(meter.port), "--count", "3"
        )
    assert result.returncode == 0, result.stderr
    header, first, *_ = result.stdout.splitlines()
    assert "f32 ABCD" in header
    assert "f32 DCBA" in header
    assert "229.01" in first
    rows = probe_rows([0x0000, 0x4120], 0)
    assert rows[1][rows[0].index("f32 CDAB")] == "10"
    assert rows[1][rows[0].index("i16")] == "0"
    assert [row[rows[0].index("ascii")] for row in probe_rows([0x5344, 0x4D00], 0)[1:]] == [
        "SD",
        "M.",
    ]


def test_templates_list_and_show():
    listed = run_fieldgate("templates", "list")
    assert listed.returncode == 0
    assert "eastron-sdm630" in listed.stdout
    shown = run_fieldgate("templates", "show", "eastron-sdm630")
    assert "total_active_energy" in shown.stdout
    assert run_fieldgate("templates", "show", "nope").returncode != 0


async def test_simulator_cli_serves_rtu_over_tcp_with_a_scripted_fault():
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fieldgate_sim",
        "modbus-rtu-tcp",
        "--port",
        "0",
        "--unit",
        "1",
        "--unit",
        "2",
        "--fault",
        "2:wrong-fc",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        port = int(re.search(rb":(\d+)$", line.strip()).group(1))  # type: ignore[union-attr]
        bus = settings_of(
            ModbusRtuOverTcpBus.model_validate(
                {"name": "b", "type": "modbus_rtu_over_tcp", "host": "127.0.0.1", "port": port}
            )
        )
        devices = [
            settings_of(
                ModbusDevice.model_validate(
                    {"name": f"m{u}", "bus": "b", "unit_id": u, "template": "eastron-sdm630"}
                )
            )
            for u in (1, 2)
        ]
        async with open_modbus_rtu_over_tcp_bus(bus, devices, SystemClock()) as rtu:
            reading = await rtu.devices[0].read()
            assert 200 < reading.values[0].value < 260  # type: ignore[operator]
            with pytest.raises(DeviceProtocolError, match="function code"):
                await rtu.devices[1].read()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


def test_read_says_why_a_value_is_missing(tmp_path):
    config = tmp_path / "fieldgate.yaml"
    with start_in_thread([RegisterBank(1, holding=[7, 8, 9])]) as meter:
        meter.set_faults(1, Faults(refuse=[("holding", 1, 1)]))
        config.write_text(
            "gateway: {id: test}\n"
            "mqtt: {host: 127.0.0.1, port: 1883}\n"
            f"buffer: {{path: {tmp_path / 'b.db'}, max_size: 1MB}}\n"
            "buses:\n"
            f"  - {{name: lan, type: modbus_tcp, host: 127.0.0.1, port: {meter.port}}}\n"
            "devices:\n"
            "  - name: m\n"
            "    bus: lan\n"
            "    points:\n"
            "      - {name: a, address: 0, type: u16}\n"
            "      - {name: b, address: 1, type: u16}\n"
            "      - {name: c, address: 2, type: u16}\n"
        )
        result = run_fieldgate("read", "-c", str(config), "m")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("a") and "7" in line for line in lines)
    (b_line,) = [line for line in lines if line.startswith("b ")]
    assert "refused by the meter, exception 2 (illegal data address)" in b_line
