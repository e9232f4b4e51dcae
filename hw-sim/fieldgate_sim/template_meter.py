"""A simulated meter built from one of fieldgate's meter templates (``drivers/modbus/templates``).

Every point of the template gets a plausible value for its unit (about 230 V, 50 Hz, a few
amperes, kilowatt-hours in the thousands, flow and supply/return temperatures for heat and water
meters), different per unit id and seed, and the register image holding them is built here with
``struct``, apart from the gateway's decoder, so a test can compare what the gateway publishes
with `TemplateMeter.values`, point by point. Text points hold a model or serial string, enum
points one of their listed raw values; the template's identification register holds what its
rule expects. Values stay fixed while the server runs (a test writes registers to change them).
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fieldgate_sim.modbus_server import RegisterBank

__all__ = ["TemplateMeter", "template_dir", "template_names"]

_FORMATS = {
    "u16": ">H",
    "i16": ">h",
    "u32": ">I",
    "i32": ">i",
    "u64": ">Q",
    "i64": ">q",
    "f32": ">f",
    "f64": ">d",
}

# (low, high) of a plausible value by unit; energy and volume counters are large and positive.
_RANGES: dict[str, tuple[float, float]] = {
    "V": (226.0, 234.0),
    "A": (0.5, 40.0),
    "W": (100.0, 9000.0),
    "kW": (0.1, 9.0),
    "VA": (100.0, 9000.0),
    "kVA": (0.1, 9.0),
    "var": (10.0, 2000.0),
    "kvar": (0.01, 2.0),
    "Hz": (49.9, 50.1),
    "Wh": (1.0e5, 9.0e6),
    "kWh": (100.0, 90000.0),
    "MWh": (1.0, 900.0),
    "kvarh": (10.0, 9000.0),
    "GJ": (1.0, 900.0),
    "m³": (10.0, 9000.0),
    "m3": (10.0, 9000.0),
    "l": (1.0e4, 9.0e6),
    "m³/h": (0.05, 2.5),
    "m³/s": (1.0e-5, 7.0e-4),
    "m3/h": (0.05, 2.5),
    "l/h": (50.0, 2500.0),
    "°C": (20.0, 75.0),
    "K": (5.0, 25.0),
    "%": (0.0, 100.0),
    "h": (100.0, 60000.0),
    "bar": (1.0, 6.0),
}
_TYPE_LIMITS = {
    "u16": (0, 2**16 - 1),
    "i16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1),
    "i64": (-(2**63), 2**63 - 1),
}


def template_dir() -> Path:
    """Where fieldgate keeps its templates (the simulator reads the YAML, not the models)."""
    return Path(str(resources.files("drivers.modbus") / "templates"))


def template_names(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or template_dir()).glob("*.yaml"))


@dataclass(frozen=True)
class _Point:
    """The part of a template point the simulator needs, read from the YAML as data."""

    name: str
    table: str
    address: int
    type: str
    unit: str | None
    scale: float
    offset: float
    word_order: str
    byte_order: str
    bit: int | None
    length: int
    labels: dict[int, str]

    @classmethod
    def of(cls, raw: dict[str, Any]) -> _Point:
        kind = raw["type"]
        return cls(
            name=raw["name"],
            table=raw.get("register", "holding"),
            address=int(raw["address"]),
            type=kind,
            unit=raw.get("unit"),
            scale=float(raw.get("scale", 1.0)),
            offset=float(raw.get("offset", 0.0)),
            word_order=raw.get("word_order", "big"),
            byte_order=raw.get("byte_order", "big"),
            bit=raw.get("bit"),
            length=int(raw.get("length", 1)),
            labels={int(k): str(v) for k, v in (raw.get("values") or {}).items()},
        )


def _words(data: bytes, word_order: str, byte_order: str) -> list[int]:
    if byte_order == "little":
        words = [data[i + 1] << 8 | data[i] for i in range(0, len(data), 2)]
    else:
        words = [data[i] << 8 | data[i + 1] for i in range(0, len(data), 2)]
    return words[::-1] if word_order == "little" else words


class TemplateMeter(RegisterBank):
    """A meter serving one template's register map under ``unit_id``, with plausible values."""

    kind = "template meter"

    def __init__(
        self,
        unit_id: int,
        template: str,
        seed: int | None = None,
        *,
        directory: Path | None = None,
    ) -> None:
        path = (directory or template_dir()) / f"{template}.yaml"
        if not path.is_file():
            known = ", ".join(template_names(directory))
            raise ValueError(f"template {template!r} is not known; known templates: {known}")
        spec = yaml.safe_load(path.read_text())
        self.template = template
        #: Manufacturer and model, as the CLI prints them.
        self.model = f"{spec['manufacturer']} {spec['model']}"
        self._random = random.Random(unit_id if seed is None else seed)  # noqa: S311 - test data
        self._serial = f"{self._random.randrange(10**7, 10**8)}"
        self._label = f"{template.upper()}-{unit_id}"
        registers: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
        bits: dict[str, dict[int, bool]] = {"coil": {}, "discrete_input": {}}
        #: What the meter means for each point, as the gateway should publish it.
        self.values: dict[str, int | float | str] = {}
        rule = spec.get("identify")
        # A point at the identification register holds what the rule expects.
        self._forced: dict[tuple[str, int], int] = (
            {(rule.get("register", "holding"), int(rule["address"])): int(rule["equals"])}
            if rule
            else {}
        )
        for raw_point in spec["points"]:
            point = _Point.of(raw_point)
            if point.table in bits:
                flag = self._random.random() < 0.5
                bits[point.table][point.address] = flag
                self.values[point.name] = int(flag)
                continue
            words, meant = self._encode(point)
            table = registers[point.table]
            for offset, word in enumerate(words):
                shared = table.get(point.address, 0) if point.bit is not None else 0
                table[point.address + offset] = word | shared
            self.values[point.name] = meant
        if rule:
            data = struct.pack(_FORMATS[rule.get("type", "u16")], rule["equals"])
            table = registers[rule.get("register", "holding")]
            for offset, word in enumerate(_words(data, "big", "big")):
                table.setdefault(int(rule["address"]) + offset, word)
        size = 1 + max((a for t in registers.values() for a in t), default=0)
        super().__init__(
            unit_id,
            holding=[registers["holding"].get(a, 0) for a in range(size)],
            input=[registers["input"].get(a, 0) for a in range(size)],
            size=size,
            coils=_bit_list(bits["coil"]),
            discrete_inputs=_bit_list(bits["discrete_input"]),
        )

    def _encode(self, point: _Point) -> tuple[list[int], int | float | str]:
        """The registers of one point and the value they mean."""
        if point.type == "string":
            text = (self._text_for(point.name))[: 2 * point.length]
            data = text.encode("ascii").ljust(2 * point.length, b"\0")
            return _words(data, point.word_order, point.byte_order), text
        forced = self._forced.get((point.table, point.address))
        if point.type == "enum":
            state = forced if forced is not None else self._random.choice(sorted(point.labels))
            data = struct.pack(">H" if point.length == 1 else ">I", state)
            return _words(data, point.word_order, point.byte_order), point.labels[state]
        if point.bit is not None:
            flag = self._random.random() < 0.5
            return [int(flag) << point.bit], int(flag)
        low, high = self._range_of(point)
        wanted = self._random.uniform(low, high)
        number = (wanted - point.offset) / point.scale
        raw: int | float
        meant: int | float
        if point.type in _TYPE_LIMITS:
            least, most = _TYPE_LIMITS[point.type]
            raw = forced if forced is not None else min(max(round(number), least), most)
            unscaled = point.scale == 1.0 and point.offset == 0.0
            meant = raw if unscaled else raw * point.scale + point.offset
        else:
            # Six significant digits: a float32 keeps them all (FLT_DIG), so the meter means
            # exactly this decimal, which is what the gateway should publish.
            raw = float(f"{number:.6g}")
            meant = raw * point.scale + point.offset
        data = struct.pack(_FORMATS[point.type], raw)
        return _words(data, point.word_order, point.byte_order), meant

    def _range_of(self, point: _Point) -> tuple[float, float]:
        name = point.name.lower()
        if "power_factor" in name or name in {"pf", "cos_phi"}:
            return 0.8, 1.0
        if point.unit is None:
            return 1.0, 100.0
        if point.unit == "V" and ("l1_l2" in name or "l2_l3" in name or "l3_l1" in name):
            return 395.0, 405.0
        if point.unit == "°C" and "return" in name:
            return 20.0, 45.0
        return _RANGES.get(point.unit, (1.0, 100.0))

    def _text_for(self, name: str) -> str:
        if "serial" in name:
            return self._serial
        return self._label


def _bit_list(bits: dict[int, bool]) -> list[bool]:
    if not bits:
        return []
    return [bits.get(a, False) for a in range(1 + max(bits))]
