"""Wall-clock aligned polling with an injected clock: no sleeping, no timing assertions."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.backoff import backoff_delay
from gateway.buffer import Buffer
from gateway.errors import DeviceTimeout
from gateway.health import DeviceHealth, HealthRegistry
from gateway.readings import PointValue, Reading
from gateway.scheduler import DevicePoller, following_slot, next_slot
from gateway.sink import Sink
from tests.manual_clock import ManualClock


class FakeClock:
    """Time moves only when someone sleeps (or a fake device says it took time)."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps = 0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def synchronised(self) -> bool:
        return True

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.sleeps > 50:
            raise _Enough


class _Enough(Exception):
    pass


class ScriptedDevice:
    """Takes ``durations[i]`` seconds for poll i and fails where ``fails`` says."""

    def __init__(self, clock: FakeClock, durations: list[float], fails: set[int]) -> None:
        self.clock, self.durations, self.fails = clock, durations, fails
        self.started_at: list[float] = []

    @property
    def name(self) -> str:
        return "meter"

    async def read(self) -> Reading:
        index = len(self.started_at)
        self.started_at.append(self.clock.now)
        self.clock.now += self.durations[index % len(self.durations)]
        if index in self.fails:
            raise DeviceTimeout("no answer")
        return Reading("meter", round(self.clock.now * 1000), (PointValue("v", 1.0),))


@given(now=st.floats(0, 1e10), interval=st.sampled_from([0.5, 1, 2, 10, 60, 900]))
def test_next_slot_is_the_next_multiple(now, interval):
    slot = next_slot(now, interval)
    assert slot > now
    assert slot - now <= interval + 1e-6
    assert abs(slot / interval - round(slot / interval)) < 1e-6


def test_following_slot_counts_skipped_cycles():
    assert following_slot(100.0, 103.0, 10.0) == (110.0, 0)
    assert following_slot(100.0, 110.0, 10.0) == (120.0, 1)
    assert following_slot(100.0, 135.5, 10.0) == (140.0, 3)


async def run_poller(tmp_path: Path, clock: FakeClock, device: ScriptedDevice) -> DeviceHealth:
    buffer = await Buffer.open(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    health = HealthRegistry()
    sink = Sink(buffer, health, clock)
    poller = DevicePoller(device, interval=10.0, sink=sink, clock=clock, stop=asyncio.Event())
    try:
        await poller.run()
    except _Enough:
        pass
    finally:
        await buffer.close()
    return health.device(device.name)


async def test_polls_align_to_the_wall_clock(tmp_path: Path):
    clock = FakeClock(start=1_000_003.7)
    device = ScriptedDevice(clock, durations=[0.2], fails=set())
    health = await run_poller(tmp_path, clock, device)
    assert device.started_at[:4] == [1_000_010.0, 1_000_020.0, 1_000_030.0, 1_000_040.0]
    assert health.cycles_skipped == 0


async def test_a_slow_poll_skips_cycles_and_never_piles_up(tmp_path: Path):
    clock = FakeClock(start=0.0)
    device = ScriptedDevice(clock, durations=[0.1, 25.0, 0.1, 0.1], fails=set())
    health = await run_poller(tmp_path, clock, device)
    # Poll 2 started at 20 and ran to 45: the slots at 30 and 40 are skipped, next is 50.
    assert device.started_at[:4] == [10.0, 20.0, 50.0, 60.0]
    assert health.cycles_skipped >= 2


async def test_a_wall_clock_stepping_back_does_not_stall_polling(tmp_path: Path):
    clock = FakeClock(start=1_000_000.0)
    device = ScriptedDevice(clock, durations=[0.1], fails=set())
    original_read = device.read

    async def read_then_step_back() -> Reading:
        reading = await original_read()
        if len(device.started_at) == 2:
            clock.now -= 3600.0  # NTP corrects a clock that was an hour ahead
        return reading

    device.read = read_then_step_back  # type: ignore[method-assign]
    await run_poller(tmp_path, clock, device)
    assert device.started_at[:2] == [1_000_010.0, 1_000_020.0]
    # Next poll on the new time's grid, one interval later, not an hour later.
    assert device.started_at[2] == 1_000_020.0 - 3600.0 + 10.0


async def test_failures_are_state_transitions(tmp_path: Path, caplog):
    clock = FakeClock(start=0.0)
    device = ScriptedDevice(clock, durations=[0.1], fails={1, 2, 3, 4})
    caplog.set_level("INFO", logger="gateway.health")
    health = await run_poller(tmp_path, clock, device)
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    recovered = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(failed) == 1
    assert len(recovered) == 1
    assert health.polls_failed == 4
    assert health.up is True


@given(failures=st.integers(1, 200), draw=st.floats(0, 1))
def test_backoff_is_capped_and_jittered(failures, draw):
    delay = backoff_delay(failures, base=1.0, cap=60.0, rand=lambda: draw)
    ceiling = min(60.0, 2.0 ** (failures - 1))
    assert ceiling / 2 <= delay <= ceiling


class BuggyDevice:
    """A driver with a bug: ``read()`` raises something that is not a DeviceError on the polls
    that ``broken`` names."""

    def __init__(self, name: str, clock: ManualClock, broken: set[int]) -> None:
        self._name, self.clock, self.broken = name, clock, broken
        self.started_at: list[float] = []

    @property
    def name(self) -> str:
        return self._name

    async def read(self) -> Reading:
        index = len(self.started_at)
        self.started_at.append(self.clock.now)
        if index in self.broken:
            raise ZeroDivisionError("a bug in the driver")
        return Reading(self._name, round(self.clock.now * 1000), (PointValue("v", 1.0),))


async def poll_side_by_side(
    tmp_path: Path, clock: ManualClock, devices: list[BuggyDevice], interval: float, until: float
) -> HealthRegistry:
    """Poll ``devices`` (each its own poller, one sink) until the clock reaches ``until``."""
    buffer = await Buffer.open(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    health = HealthRegistry()
    sink = Sink(buffer, health, clock)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(DevicePoller(d, interval, sink, clock, stop).run()) for d in devices
    ]
    try:
        await clock.settle(sleepers=len(devices))
        await clock.advance_to(until, sleepers=len(devices))
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await buffer.close()
    return health


async def test_a_driver_bug_costs_its_device_only(tmp_path: Path, caplog):
    caplog.set_level("INFO", logger="gateway.health")
    clock = ManualClock(start=1000.0)
    buggy = BuggyDevice("buggy", clock, broken={1, 2, 3})
    steady = BuggyDevice("steady", clock, broken=set())
    health = await poll_side_by_side(tmp_path, clock, [buggy, steady], 10.0, until=1060.0)
    slots = [1010.0, 1020.0, 1030.0, 1040.0, 1050.0, 1060.0]
    # Both kept their slots; the buggy one was tried again on every slot and came back.
    assert steady.started_at == slots
    assert buggy.started_at == slots
    assert health.device("buggy").driver_faults == 3
    assert (health.device("buggy").polls_ok, health.device("buggy").up) == (3, True)
    assert health.device("steady").polls_failed == 0
    assert health.progress.readings_stored == 9
    # Logged once, with the traceback; the recovery once.
    faults = [r for r in caplog.records if "driver failed unexpectedly" in r.getMessage()]
    assert len(faults) == 1
    assert faults[0].exc_info is not None
    assert "ZeroDivisionError" in caplog.text
    assert sum("buggy answers again" in r.getMessage() for r in caplog.records) == 1


async def test_poller_ends_on_the_stop_flag_even_if_its_cancellation_was_lost(tmp_path: Path):
    """On Python 3.11 asyncio.wait_for can swallow a cancellation that arrives with the answer:
    the poller must then see the stop flag and end instead of polling on."""
    clock = ManualClock(start=0.0)
    stop = asyncio.Event()
    device = BuggyDevice("meter", clock, broken=set())
    original = device.read

    async def read_while_stopping() -> Reading:
        stop.set()  # the stop arrives while the read is in flight; no cancel reaches us
        return await original()

    device.read = read_while_stopping  # type: ignore[method-assign]
    buffer = await Buffer.open(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    try:
        poller = DevicePoller(device, 10.0, Sink(buffer, HealthRegistry(), clock), clock, stop)
        task = asyncio.create_task(poller.run())
        await clock.settle(sleepers=1)
        await clock.advance_to(10.0, sleepers=0)
        async with asyncio.timeout(30):
            await task  # returns by itself: nobody cancelled it
    finally:
        await buffer.close()
    assert device.started_at == [10.0]
    assert clock.sleeping() == 0


class SilentDevice(BuggyDevice):
    """Never answers: each read waits out its timeout on the clock, then fails."""

    async def read(self) -> Reading:
        self.started_at.append(self.clock.now)
        await self.clock.sleep(0.3)
        raise DeviceTimeout("no answer within the timeout")


async def test_a_silent_meter_does_not_delay_the_other(tmp_path: Path):
    clock = ManualClock(start=0.0)
    silent = SilentDevice("silent", clock, broken=set())
    steady = BuggyDevice("steady", clock, broken=set())
    health = await poll_side_by_side(tmp_path, clock, [silent, steady], 0.5, until=10.0)
    slots = [0.5 * n for n in range(1, 21)]
    assert steady.started_at == slots
    assert silent.started_at == slots
    assert health.device("steady").cycles_skipped == 0
    # The silent meter's last poll (at 10.0) is still waiting for its timeout.
    assert (health.device("silent").polls_failed, health.device("steady").polls_ok) == (19, 20)
