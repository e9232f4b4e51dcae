"""Eastron SDM630 three-phase meter: input register map and a deterministic value model.

Every value is an IEEE 754 float32 in two input registers (function code 4), high word first,
at the 0-based wire address (the datasheet's 3xxxx numbers minus 30001).

The model is a pure function of (seed, t): voltages, currents and frequency are sums of slow
sinusoids, so the same seed gives the same meter in every run, and energy counters are the exact
closed-form integral of the (always positive) power, so they only ever grow.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "INPUT_BLOCK_SIZE",
    "INPUT_REGISTERS",
    "MAX_MODEL_TIME",
    "REGISTERS_BY_NAME",
    "Sdm630Model",
    "Sdm630Register",
    "encode_float32",
]

#: Input registers 0x0000..0x017F cover every value the SDM630 publishes.
INPUT_BLOCK_SIZE = 0x0180

#: Beyond ~31.7 years float64 rounding would start to eat the energy increments.
MAX_MODEL_TIME = 1.0e9

# Energy counters advance in steps of this many seconds (a real SDM630 updates them about once
# a second); stepping on a fixed grid is what makes them monotonic despite float rounding.
_ENERGY_STEP_S = 0.1
_JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Sdm630Register:
    """One float32 value of the SDM630 input register map."""

    name: str
    #: 0-based wire address of the high word; the low word follows.
    address: int
    unit: str


INPUT_REGISTERS: tuple[Sdm630Register, ...] = (
    Sdm630Register("phase_1_voltage", 0x0000, "V"),
    Sdm630Register("phase_2_voltage", 0x0002, "V"),
    Sdm630Register("phase_3_voltage", 0x0004, "V"),
    Sdm630Register("phase_1_current", 0x0006, "A"),
    Sdm630Register("phase_2_current", 0x0008, "A"),
    Sdm630Register("phase_3_current", 0x000A, "A"),
    Sdm630Register("phase_1_active_power", 0x000C, "W"),
    Sdm630Register("phase_2_active_power", 0x000E, "W"),
    Sdm630Register("phase_3_active_power", 0x0010, "W"),
    Sdm630Register("phase_1_apparent_power", 0x0012, "VA"),
    Sdm630Register("phase_2_apparent_power", 0x0014, "VA"),
    Sdm630Register("phase_3_apparent_power", 0x0016, "VA"),
    Sdm630Register("phase_1_reactive_power", 0x0018, "var"),
    Sdm630Register("phase_2_reactive_power", 0x001A, "var"),
    Sdm630Register("phase_3_reactive_power", 0x001C, "var"),
    Sdm630Register("phase_1_power_factor", 0x001E, ""),
    Sdm630Register("phase_2_power_factor", 0x0020, ""),
    Sdm630Register("phase_3_power_factor", 0x0022, ""),
    Sdm630Register("average_line_to_neutral_voltage", 0x002A, "V"),
    Sdm630Register("average_line_current", 0x002E, "A"),
    Sdm630Register("sum_of_line_currents", 0x0030, "A"),
    Sdm630Register("total_system_power", 0x0034, "W"),
    Sdm630Register("total_system_apparent_power", 0x0038, "VA"),
    Sdm630Register("total_system_reactive_power", 0x003C, "var"),
    Sdm630Register("total_system_power_factor", 0x003E, ""),
    Sdm630Register("frequency", 0x0046, "Hz"),
    Sdm630Register("import_active_energy", 0x0048, "kWh"),
    Sdm630Register("export_active_energy", 0x004A, "kWh"),
    Sdm630Register("import_reactive_energy", 0x004C, "kvarh"),
    Sdm630Register("export_reactive_energy", 0x004E, "kvarh"),
    Sdm630Register("line_1_to_2_voltage", 0x00C8, "V"),
    Sdm630Register("line_2_to_3_voltage", 0x00CA, "V"),
    Sdm630Register("line_3_to_1_voltage", 0x00CC, "V"),
    Sdm630Register("average_line_to_line_voltage", 0x00CE, "V"),
    Sdm630Register("neutral_current", 0x00E0, "A"),
    Sdm630Register("total_active_energy", 0x0156, "kWh"),
    Sdm630Register("total_reactive_energy", 0x0158, "kvarh"),
)

REGISTERS_BY_NAME: Mapping[str, Sdm630Register] = MappingProxyType(
    {reg.name: reg for reg in INPUT_REGISTERS}
)


def encode_float32(value: float) -> tuple[int, int]:
    """Encode a float as the SDM630 does: big-endian float32, high word first."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return high, low


@dataclass(frozen=True)
class _Wave:
    """offset + sum(amplitude * sin(omega * t + phase)), closed under multiplication.

    Keeping every signal in this form lets power (a product of waves) be integrated exactly.
    """

    offset: float
    #: (amplitude, omega in rad/s > 0, phase in rad)
    terms: tuple[tuple[float, float, float], ...] = ()

    def at(self, t: float) -> float:
        return self.offset + math.fsum(a * math.sin(w * t + p) for a, w, p in self.terms)

    def integral(self, t: float) -> float:
        """Integral from 0 to t."""
        return self.offset * t + math.fsum(
            a / w * (math.cos(p) - math.cos(w * t + p)) for a, w, p in self.terms
        )

    def __mul__(self, other: _Wave) -> _Wave:
        offset = self.offset * other.offset
        terms = [(a * other.offset, w, p) for a, w, p in self.terms]
        terms += [(b * self.offset, w, p) for b, w, p in other.terms]
        for a, w1, p1 in self.terms:
            for b, w2, p2 in other.terms:
                # sin x sin y = (cos(x - y) - cos(x + y)) / 2, and cos z = sin(z + pi/2)
                half = a * b / 2
                if math.isclose(w1, w2, rel_tol=0.0, abs_tol=1e-12):
                    offset += half * math.cos(p1 - p2)
                elif w1 > w2:
                    terms.append((half, w1 - w2, p1 - p2 + math.pi / 2))
                else:
                    terms.append((half, w2 - w1, p2 - p1 + math.pi / 2))
                terms.append((half, w1 + w2, p1 + p2 - math.pi / 2))
        return _Wave(offset, tuple(terms))


def _omega(rng: random.Random, min_period_s: float, max_period_s: float) -> float:
    return 2 * math.pi / rng.uniform(min_period_s, max_period_s)


def _phase(rng: random.Random) -> float:
    return rng.uniform(0.0, 2 * math.pi)


class Sdm630Model:
    """Deterministic readings of one simulated SDM630 feeding an inductive three-phase load.

    Voltages stay within 230 V +/- 5 V, currents within 0..40 A, frequency within 50 Hz +/- 0.1;
    power = V * I * pf per phase. The load never exports, so the export counters hold their
    (seed-dependent) start values while the import counters grow.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        rng = random.Random(seed)  # noqa: S311 - reproducible simulation, not secrets
        # The grid swing is common to all phases; each phase adds its own offset and ripple.
        grid = [(2.0, _omega(rng, 60, 300), _phase(rng)), (1.0, _omega(rng, 7, 40), _phase(rng))]
        self._voltage: list[_Wave] = []
        self._current: list[_Wave] = []
        self._power_factor: list[float] = []
        for _ in range(3):
            ripple = (0.8, _omega(rng, 5, 20), _phase(rng))
            self._voltage.append(_Wave(230.0 + rng.uniform(-0.8, 0.8), (*grid, ripple)))
            mean = rng.uniform(10.0, 24.0)
            # Amplitudes sum to 0.48 * mean, so the current stays within (5 A, 36 A).
            self._current.append(
                _Wave(
                    mean,
                    (
                        (0.25 * mean, _omega(rng, 20, 60), _phase(rng)),
                        (0.15 * mean, _omega(rng, 200, 900), _phase(rng)),
                        (0.08 * mean, _omega(rng, 3, 8), _phase(rng)),
                    ),
                )
            )
            self._power_factor.append(rng.uniform(0.86, 0.97))
        self._frequency = _Wave(
            50.0,
            ((0.06, _omega(rng, 30, 120), _phase(rng)), (0.03, _omega(rng, 4, 15), _phase(rng))),
        )
        # A constant pf per phase keeps P = S * pf and Q = S * sin(phi) exactly integrable.
        self._apparent = [v * i for v, i in zip(self._voltage, self._current, strict=True)]
        self._reactive_factor = [math.sqrt(1.0 - pf * pf) for pf in self._power_factor]
        self._import_kwh_0 = rng.uniform(100.0, 1000.0)
        self._export_kwh_0 = rng.uniform(0.5, 20.0)
        self._import_kvarh_0 = rng.uniform(30.0, 300.0)
        self._export_kvarh_0 = rng.uniform(0.1, 5.0)

    def values_at(self, t_seconds: float) -> dict[str, float]:
        """Every value of `INPUT_REGISTERS`, by name, `t_seconds` after the meter started."""
        t = float(t_seconds)
        if not 0.0 <= t <= MAX_MODEL_TIME:
            raise ValueError(f"t_seconds must be within 0..{MAX_MODEL_TIME:g}, got {t_seconds!r}")
        volts = [wave.at(t) for wave in self._voltage]
        amps = [wave.at(t) for wave in self._current]
        apparent = [v * i for v, i in zip(volts, amps, strict=True)]
        active = [s * pf for s, pf in zip(apparent, self._power_factor, strict=True)]
        reactive = [s * q for s, q in zip(apparent, self._reactive_factor, strict=True)]
        # Phases 120 degrees apart: |Va - Vb| = sqrt(Va^2 + Vb^2 + Va*Vb).
        line_to_line = [
            math.sqrt(a * a + b * b + a * b)
            for a, b in zip(volts, volts[1:] + volts[:1], strict=True)
        ]
        i1, i2, i3 = amps
        neutral = math.sqrt(max(0.0, i1 * i1 + i2 * i2 + i3 * i3 - i1 * i2 - i2 * i3 - i3 * i1))
        total_p, total_s, total_q = sum(active), sum(apparent), sum(reactive)
        import_kwh, import_kvarh = self._energy_at(t)

        values: dict[str, float] = {}
        for n in range(3):
            values[f"phase_{n + 1}_voltage"] = volts[n]
            values[f"phase_{n + 1}_current"] = amps[n]
            values[f"phase_{n + 1}_active_power"] = active[n]
            values[f"phase_{n + 1}_apparent_power"] = apparent[n]
            values[f"phase_{n + 1}_reactive_power"] = reactive[n]
            values[f"phase_{n + 1}_power_factor"] = self._power_factor[n]
        values["average_line_to_neutral_voltage"] = sum(volts) / 3
        values["average_line_current"] = sum(amps) / 3
        values["sum_of_line_currents"] = sum(amps)
        values["total_system_power"] = total_p
        values["total_system_apparent_power"] = total_s
        values["total_system_reactive_power"] = total_q
        values["total_system_power_factor"] = total_p / total_s
        values["frequency"] = self._frequency.at(t)
        values["import_active_energy"] = import_kwh
        values["export_active_energy"] = self._export_kwh_0
        values["import_reactive_energy"] = import_kvarh
        values["export_reactive_energy"] = self._export_kvarh_0
        values["line_1_to_2_voltage"] = line_to_line[0]
        values["line_2_to_3_voltage"] = line_to_line[1]
        values["line_3_to_1_voltage"] = line_to_line[2]
        values["average_line_to_line_voltage"] = sum(line_to_line) / 3
        values["neutral_current"] = neutral
        values["total_active_energy"] = import_kwh + self._export_kwh_0
        values["total_reactive_energy"] = import_kvarh + self._export_kvarh_0
        return values

    def registers_at(self, t_seconds: float) -> list[int]:
        """The whole input register block 0..INPUT_BLOCK_SIZE-1; unmapped registers are 0."""
        registers = [0] * INPUT_BLOCK_SIZE
        for name, value in self.values_at(t_seconds).items():
            address = REGISTERS_BY_NAME[name].address
            registers[address], registers[address + 1] = encode_float32(value)
        return registers

    def _energy_at(self, t: float) -> tuple[float, float]:
        """(import kWh, import kvarh), stepped on a fixed grid so rounding cannot make them dip."""
        t_step = math.floor(t / _ENERGY_STEP_S) * _ENERGY_STEP_S
        joules = [s.integral(t_step) for s in self._apparent]
        active = math.fsum(j * pf for j, pf in zip(joules, self._power_factor, strict=True))
        reactive = math.fsum(j * q for j, q in zip(joules, self._reactive_factor, strict=True))
        return (
            self._import_kwh_0 + active / _JOULES_PER_KWH,
            self._import_kvarh_0 + reactive / _JOULES_PER_KWH,
        )
