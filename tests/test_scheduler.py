"""Wall-clock aligned polling with an injected clock: no sleeping, no timing assertions."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.backoff import backoff_delay
from gateway.buffer import Buffer
from gateway.errors import DeviceTimeout
from gateway.readings import PointValue, Reading
from gateway.scheduler import DevicePoller, following_slot, next_slot


class FakeClock:
    """Time moves only when someone sleeps (or a fake device says it took time)."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps = 0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

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


async def run_poller(tmp_path: Path, clock: FakeClock, device: ScriptedDevice) -> DevicePoller:
    buffer = await Buffer.open(tmp_path / "b.db", max_size=10**9, max_age_s=1e9)
    poller = DevicePoller(device, interval=10.0, buffer=buffer, clock=clock)
    try:
        await poller.run()
    except _Enough:
        pass
    finally:
        await buffer.close()
    return poller


async def test_polls_align_to_the_wall_clock(tmp_path: Path):
    clock = FakeClock(start=1_000_003.7)
    device = ScriptedDevice(clock, durations=[0.2], fails=set())
    poller = await run_poller(tmp_path, clock, device)
    assert device.started_at[:4] == [1_000_010.0, 1_000_020.0, 1_000_030.0, 1_000_040.0]
    assert poller.health.cycles_skipped == 0


async def test_a_slow_poll_skips_cycles_and_never_piles_up(tmp_path: Path):
    clock = FakeClock(start=0.0)
    device = ScriptedDevice(clock, durations=[0.1, 25.0, 0.1, 0.1], fails=set())
    poller = await run_poller(tmp_path, clock, device)
    # Poll 2 started at 20 and ran to 45: the slots at 30 and 40 are skipped, next is 50.
    assert device.started_at[:4] == [10.0, 20.0, 50.0, 60.0]
    assert poller.health.cycles_skipped >= 2


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
    poller = await run_poller(tmp_path, clock, device)
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    recovered = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(failed) == 1
    assert len(recovered) == 1
    assert poller.health.polls_failed == 4
    assert poller.health.up is True


@given(failures=st.integers(1, 200), draw=st.floats(0, 1))
def test_backoff_is_capped_and_jittered(failures, draw):
    delay = backoff_delay(failures, base=1.0, cap=60.0, rand=lambda: draw)
    ceiling = min(60.0, 2.0 ** (failures - 1))
    assert ceiling / 2 <= delay <= ceiling
