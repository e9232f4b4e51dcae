"""Sampling and staleness of one BLE sensor (drivers.ble.sampling), over a manual clock: what a
sensor that advertises every second becomes, per interval, and when it counts as missing."""

from __future__ import annotations

import pytest

from drivers.ble.sampling import SensorSampler, mean_of
from drivers.ble.settings import Sampling
from gateway.readings import PointValue
from tests.manual_clock import ManualClock


def advertise(sampler: SensorSampler, clock: ManualClock, temperature: float) -> bool:
    values = [PointValue("temperature", temperature, "°C"), PointValue("state", "ok")]
    return sampler.add(values, clock.monotonic(), round(clock.wall() * 1000))


def run(sampler: SensorSampler, clock: ManualClock, adverts: list[float], every: float = 1.0):
    """One advertisement per ``every`` seconds, a look for a reading after each; returns the
    readings taken."""
    taken = []
    for temperature in adverts:
        advertise(sampler, clock, temperature)
        clock.now += every
        sample = sampler.take(clock.monotonic())
        if sample is not None:
            taken.append(sample)
    return taken


def test_an_advertiser_of_every_second_is_written_once_per_interval():
    clock = ManualClock(1000.0)
    sampler = SensorSampler(10.0, Sampling.LAST, 300.0, clock.monotonic())
    taken = run(sampler, clock, [20.0 + i / 100 for i in range(60)])
    assert len(taken) == 6
    # The newest value of each window, stamped with the newest advertisement's wall time.
    assert [s.values[0].value for s in taken] == [20.09, 20.19, 20.29, 20.39, 20.49, 20.59]
    assert taken[0].read_at_ms == round((1000.0 + 9) * 1000)
    assert taken[0].values[0].unit == "°C"


def test_mean_sampling_averages_numbers_and_keeps_the_newest_text():
    clock = ManualClock(0.0)
    sampler = SensorSampler(4.0, Sampling.MEAN, 300.0, clock.monotonic())
    taken = run(sampler, clock, [21.37, 21.38, 21.37, 21.38])
    assert len(taken) == 1
    by_name = {p.name: p.value for p in taken[0].values}
    assert by_name == {"temperature": 21.375, "state": "ok"}


@pytest.mark.parametrize(
    ("numbers", "mean"), [([1, 2], 1.5), ([0.1, 0.2], 0.15), ([2950, 2950, 2951], 2950.3)]
)
def test_a_mean_carries_one_decimal_more_than_its_values(numbers, mean):
    assert mean_of(numbers) == mean


def test_a_silent_sensor_is_missing_once_and_its_return_ends_that():
    clock = ManualClock(0.0)
    sampler = SensorSampler(1.0, Sampling.LAST, 30.0, clock.monotonic())
    run(sampler, clock, [5.0] * 10)
    reports = 0
    for _ in range(120):  # two silent minutes, looked at every second
        clock.now += 1.0
        reports += sampler.went_missing(clock.monotonic())
    assert reports == 1
    assert sampler.missing
    assert advertise(sampler, clock, 6.0) is True, "the return is told once"
    assert advertise(sampler, clock, 6.1) is False
    assert not sampler.went_missing(clock.monotonic())


def test_a_sensor_never_heard_is_missing_its_staleness_limit_after_the_scan_started():
    clock = ManualClock(0.0)
    sampler = SensorSampler(1.0, Sampling.LAST, 30.0, clock.monotonic())
    clock.now = 29.0
    assert not sampler.went_missing(clock.monotonic())
    clock.now = 30.0
    assert sampler.went_missing(clock.monotonic())
    assert not sampler.heard_ever


def test_a_restarted_scan_gives_a_sensor_its_limit_afresh():
    clock = ManualClock(0.0)
    sampler = SensorSampler(1.0, Sampling.LAST, 30.0, clock.monotonic())
    clock.now = 100.0  # the adapter was away this long: nobody could hear the sensor
    sampler.scan_started(clock.monotonic())
    clock.now = 129.0
    assert not sampler.went_missing(clock.monotonic())
    clock.now = 130.0
    assert sampler.went_missing(clock.monotonic())


def test_repeated_packets_keep_a_sensor_alive_without_a_reading():
    clock = ManualClock(0.0)
    sampler = SensorSampler(5.0, Sampling.LAST, 10.0, clock.monotonic())
    for _ in range(30):
        clock.now += 1.0
        sampler.heard(clock.monotonic())
        assert sampler.take(clock.monotonic()) is None
        assert not sampler.went_missing(clock.monotonic())
