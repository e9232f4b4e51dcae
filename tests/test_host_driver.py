"""The host driver against real files: this machine's /proc and os.statvfs, and a directory
standing in for / with thermal zones and Raspberry Pi firmware flags written by the test."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.factories import bus_driver_factory
from drivers.host.config import HostDevice
from drivers.host.driver import HostSystem
from drivers.host.settings import HostDeviceSettings, HostMetric
from drivers.host.sources import THROTTLED_BITS, decode_throttled, parse_vcgencmd_throttled
from gateway.config.handover import settings_of
from gateway.errors import DeviceUnreachable
from gateway.readings import Quality, Reading
from tests.harness import settings_from_text

READ_AT = 1_700_000_000.25
THROTTLED = [metric for metric in HostMetric if metric in THROTTLED_BITS]


class FixedClock:
    def wall(self) -> float:
        return READ_AT

    def monotonic(self) -> float:
        return 0.0

    def synchronised(self) -> bool:
        return True

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def device(
    *metrics: HostMetric, filesystem: Path = Path("/var/lib/fieldgate")
) -> HostDeviceSettings:
    chosen = list(metrics) if metrics else list(HostMetric)
    model = HostDevice(name="box", bus="this-box", metrics=chosen, filesystem=filesystem)
    settings: HostDeviceSettings = settings_of(model)
    return settings


async def read_once(
    config: HostDeviceSettings,
    root: Path = Path("/"),
    vcgencmd: str | None = None,
    vcgencmd_timeout: float = 2.0,
) -> Reading:
    async with HostSystem(
        [config], FixedClock(), root=root, vcgencmd=vcgencmd, vcgencmd_timeout=vcgencmd_timeout
    ) as host:
        return await host.devices[0].read()


def values_of(reading: Reading) -> dict[str, float | int | str | None]:
    return {point.name: point.value for point in reading.values}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def uptime_now() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def executable(path: Path, script: str) -> str:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_this_machine_reports_what_it_has(tmp_path: Path):
    reading = await read_once(device(filesystem=tmp_path))
    values = values_of(reading)
    assert reading.device == "box"
    assert reading.read_at_ms == round(READ_AT * 1000)
    assert reading.quality is Quality.GOOD
    # Linux always has these; what it lacks (no thermal zone in a VM) is left out, not null.
    for metric in ("load_1m", "load_5m", "load_15m", "uptime_s", "memory_available_bytes"):
        assert metric in values
    assert None not in values.values()
    uptime, free, percent = (
        values["uptime_s"],
        values["filesystem_free_bytes"],
        values["filesystem_free_percent"],
    )
    assert isinstance(uptime, float)
    assert 0 < uptime <= uptime_now()
    stats = os.statvfs(tmp_path)
    assert isinstance(free, int)
    assert abs(free - stats.f_bavail * stats.f_frsize) < 64 * 2**20
    assert isinstance(percent, float)
    assert 0 <= percent <= 100
    units = {point.name: point.unit for point in reading.values}
    assert units["filesystem_free_bytes"] == "B"
    assert units["uptime_s"] == "s"
    assert units["load_1m"] is None


async def test_the_soc_zone_is_chosen_by_its_type(tmp_path: Path):
    thermal = tmp_path / "sys/class/thermal"
    write(thermal / "thermal_zone0/type", "gpu-thermal\n")
    write(thermal / "thermal_zone0/temp", "40000\n")
    write(thermal / "thermal_zone1/type", "cpu-thermal\n")
    write(thermal / "thermal_zone1/temp", "51234\n")
    reading = await read_once(device(HostMetric.SOC_TEMPERATURE), root=tmp_path)
    assert values_of(reading) == {"soc_temperature": 51.234}
    assert reading.values[0].unit == "°C"


async def test_the_first_zone_when_no_type_names_the_soc(tmp_path: Path):
    thermal = tmp_path / "sys/class/thermal"
    for number, millidegrees in ((10, 90000), (2, 45500)):
        write(thermal / f"thermal_zone{number}/type", "acpitz\n")
        write(thermal / f"thermal_zone{number}/temp", f"{millidegrees}\n")
    write(thermal / "thermal_zone0/type", "acpitz\n")  # a zone without a sensor: no temp
    (thermal / "cooling_device0").mkdir()
    reading = await read_once(device(HostMetric.SOC_TEMPERATURE), root=tmp_path)
    assert values_of(reading) == {"soc_temperature": 45.5}  # zone 2 comes before zone 10


async def test_firmware_flags_from_sysfs(tmp_path: Path):
    # 0x50005: under-voltage and throttling now, and both since boot.
    write(tmp_path / "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    reading = await read_once(device(*THROTTLED), root=tmp_path)
    assert values_of(reading) == {
        "under_voltage_now": 1,
        "frequency_capped_now": 0,
        "throttled_now": 1,
        "soft_temperature_limit_now": 0,
        "under_voltage_since_boot": 1,
        "frequency_capped_since_boot": 0,
        "throttled_since_boot": 1,
        "soft_temperature_limit_since_boot": 0,
    }


async def test_firmware_flags_from_vcgencmd_when_sysfs_has_none(tmp_path: Path):
    command = executable(
        tmp_path / "vcgencmd", 'test "$1" = get_throttled && echo throttled=0xa0000'
    )
    reading = await read_once(
        device(HostMetric.UNDER_VOLTAGE_NOW, HostMetric.FREQUENCY_CAPPED_SINCE_BOOT),
        root=tmp_path,
        vcgencmd=command,
    )
    assert values_of(reading) == {"under_voltage_now": 0, "frequency_capped_since_boot": 1}


async def test_a_stuck_vcgencmd_is_killed_and_its_flags_are_null(tmp_path: Path):
    pid_file = tmp_path / "pid"
    command = executable(tmp_path / "vcgencmd", f"echo $$ > {pid_file}\nexec sleep 30\n")
    config = device(HostMetric.THROTTLED_NOW, HostMetric.FILESYSTEM_FREE_BYTES, filesystem=tmp_path)
    reading = await read_once(config, root=tmp_path, vcgencmd=command, vcgencmd_timeout=0.3)
    assert reading.quality is Quality.PARTIAL
    assert values_of(reading)["throttled_now"] is None
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


async def test_a_failing_vcgencmd_gives_null_flags(tmp_path: Path):
    command = executable(tmp_path / "vcgencmd", "echo 'VCHI initialization failed' >&2\nexit 255\n")
    config = device(HostMetric.THROTTLED_NOW, HostMetric.FILESYSTEM_FREE_BYTES, filesystem=tmp_path)
    reading = await read_once(config, root=tmp_path, vcgencmd=command)
    assert reading.quality is Quality.PARTIAL
    assert values_of(reading)["throttled_now"] is None


async def test_absent_is_left_out_but_unreadable_is_null(tmp_path: Path):
    # A zone whose temp cannot be read (a directory here; EIO on a real sensor) exists: its value
    # is null and the reading partial. /proc is absent under this root: load is left out.
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").mkdir(parents=True)
    config = device(
        HostMetric.SOC_TEMPERATURE,
        HostMetric.LOAD_1M,
        HostMetric.FILESYSTEM_FREE_PERCENT,
        filesystem=tmp_path,
    )
    reading = await read_once(config, root=tmp_path)
    assert reading.quality is Quality.PARTIAL
    values = values_of(reading)
    assert set(values) == {"soc_temperature", "filesystem_free_percent"}
    assert values["soc_temperature"] is None


async def test_garbage_in_a_source_is_null_not_a_crash(tmp_path: Path):
    write(tmp_path / "proc/loadavg", "not numbers\n")
    write(tmp_path / "proc/uptime", "12.5 40.0\n")
    reading = await read_once(device(HostMetric.LOAD_15M, HostMetric.UPTIME_S), root=tmp_path)
    assert values_of(reading) == {"load_15m": None, "uptime_s": 12.5}


async def test_memory_available_in_bytes(tmp_path: Path):
    write(tmp_path / "proc/meminfo", "MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 250 kB\n")
    reading = await read_once(device(HostMetric.MEMORY_AVAILABLE_BYTES), root=tmp_path)
    assert values_of(reading) == {"memory_available_bytes": 250 * 1024}
    assert reading.values[0].unit == "B"


async def test_nothing_to_read_is_a_device_error_saying_what_is_missing(tmp_path: Path):
    config = device(
        HostMetric.SOC_TEMPERATURE,
        HostMetric.UNDER_VOLTAGE_NOW,
        HostMetric.THROTTLED_NOW,
        HostMetric.FILESYSTEM_FREE_BYTES,
        filesystem=tmp_path / "not-there",
    )
    with pytest.raises(DeviceUnreachable) as caught:
        await read_once(config, root=tmp_path)
    message = str(caught.value)
    assert "none of its metrics can be read" in message
    assert "soc_temperature (no thermal zone under /sys/class/thermal)" in message
    assert (
        "under_voltage_now, throttled_now (no /sys/devices/platform/soc/soc:firmware/"
        "get_throttled and no vcgencmd)" in message
    )
    assert f"filesystem_free_bytes (no directory {tmp_path / 'not-there'})" in message


async def test_missing_metrics_are_logged_once_not_every_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="drivers.host")
    config = device(HostMetric.SOC_TEMPERATURE, HostMetric.UPTIME_S)
    write(tmp_path / "proc/uptime", "12.5 40.0\n")
    async with HostSystem([config], FixedClock(), root=tmp_path, vcgencmd=None) as host:
        for _ in range(3):
            await host.devices[0].read()
        write(tmp_path / "sys/class/thermal/thermal_zone0/temp", "45000\n")
        assert values_of(await host.devices[0].read())["soc_temperature"] == 45.0
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "box: left out of its readings: soc_temperature (no thermal zone under /sys/class/thermal)",
        "box: every metric is available again",
    ]


async def test_the_catalog_opens_a_host_bus_from_a_config(tmp_path: Path):
    config = settings_from_text(
        f"""
gateway: {{id: gw}}
mqtt: {{host: 127.0.0.1}}
buses:
  - {{name: this-box, type: host}}
devices:
  - name: health
    bus: this-box
    metrics: [filesystem_free_percent, uptime_s]
    filesystem: {tmp_path}
"""
    )
    bus = config.buses[0]
    factory = bus_driver_factory(bus.type)
    async with factory(bus, config.devices_on(bus.name), FixedClock()) as host:
        assert [polled.name for polled in host.devices] == ["health"]
        reading = await host.devices[0].read()
    assert [point.name for point in reading.values] == ["filesystem_free_percent", "uptime_s"]


@given(word=st.integers(min_value=0, max_value=2**32 - 1))
def test_throttled_flags_are_the_bits_of_the_word(word: int):
    flags = decode_throttled(word)
    assert set(flags) == set(THROTTLED)
    assert set(flags.values()) <= {0, 1}
    known = sum(1 << bit for bit in THROTTLED_BITS.values())
    assert sum(flag << THROTTLED_BITS[metric] for metric, flag in flags.items()) == word & known
    assert parse_vcgencmd_throttled(f"throttled={word:#x}\n") == word


@pytest.mark.parametrize("answer", ["", "throttled=", 'error=1 error_msg="Command not registered"'])
def test_vcgencmd_answers_without_a_word_are_refused(answer: str):
    with pytest.raises(ValueError, match="unexpected answer"):
        parse_vcgencmd_throttled(answer)
