"""Meter templates: register maps as data (``drivers/modbus/templates/*.yaml``), one file per
meter, each naming the datasheet (and revision) it was taken from.

A device says ``template: eastron-sdm630``; its own ``points`` replace template points of the
same name or add new ones, ``drop`` leaves template points out, and the template's block limits
apply unless the device sets its own.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from drivers.modbus.config import ModbusPoint
from drivers.modbus.settings import MAX_REGISTERS_PER_READ, REGISTER_COUNT, RegisterType, ValueType
from gateway.config.fields import Name, StrictModel

TEMPLATE_DIR = Path(__file__).with_name("templates")


class Datasheet(StrictModel):
    title: str = Field(description="The document the register map was taken from")
    revision: str = Field(description="Its revision or date")
    url: str | None = None


class Identification(StrictModel):
    """A register whose value tells this meter from others (``fieldgate scan`` reads it)."""

    register_type: RegisterType = Field(default=RegisterType.HOLDING, alias="register")
    address: int = Field(ge=0, le=65535)
    type: ValueType = ValueType.U16
    equals: float | int

    @field_validator("type")
    @classmethod
    def _numeric(cls, value: ValueType) -> ValueType:
        # The rule reads a number of a fixed width: text and enums have no such width here.
        if value not in REGISTER_COUNT or value is ValueType.BOOL:
            raise ValueError(f"an identification register holds a number, not {value}")
        return value


class MeterTemplate(StrictModel):
    name: Name
    manufacturer: str
    model: str
    medium: Literal["electricity", "heat", "water", "gas", "pv"]
    datasheet: Datasheet
    max_block: int = Field(default=MAX_REGISTERS_PER_READ, ge=1, le=MAX_REGISTERS_PER_READ)
    max_gap: int = Field(default=0, ge=0, le=MAX_REGISTERS_PER_READ)
    default_unit_id: int = Field(default=1, ge=1, le=247)
    identify: Identification | None = None
    points: list[ModbusPoint] = Field(min_length=1)

    @model_validator(mode="after")
    def _sound(self) -> MeterTemplate:
        names: set[str] = set()
        taken: dict[tuple[RegisterType, int], str] = {}
        for point in self.points:
            if point.name in names:
                raise ValueError(f"point name {point.name!r} is used twice")
            names.add(point.name)
            for address in range(point.address, point.address + point.register_count):
                key = (point.register_type, address)
                if key in taken and point.bit is None:
                    raise ValueError(
                        f"{point.name} overlaps {taken[key]} at {point.register_type} {address}"
                    )
                taken[key] = point.name
        return self


@functools.cache
def load_templates() -> dict[str, MeterTemplate]:
    """Every template shipped with fieldgate, by name. A broken template file is a bug of
    fieldgate's (tests load them all), so it raises."""
    templates: dict[str, MeterTemplate] = {}
    for path in sorted(TEMPLATE_DIR.glob("*.yaml")):
        template = MeterTemplate.model_validate(yaml.safe_load(path.read_text()))
        if template.name != path.stem:
            raise ValueError(f"{path}: name {template.name!r} differs from the file name")
        templates[template.name] = template
    return templates


def expand_template(data: object) -> object:
    """A device's raw config with its template's points merged in (see the module's doc).
    An unknown template is left for the ``template`` field's own check to report."""
    if not isinstance(data, dict) or not isinstance(data.get("template"), str):
        return data
    templates = load_templates()
    name = data["template"]
    if name not in templates:
        known = ", ".join(sorted(templates))
        raise ValueError(f"template {name!r} is not known; known templates: {known}")
    template = templates[name]
    drop = data.get("drop") or []
    if not isinstance(drop, list):
        return data
    unknown = [n for n in drop if n not in {p.name for p in template.points}]
    if unknown:
        raise ValueError(f"drop: {', '.join(map(str, unknown))} not in template {name!r}")
    own: list[Any] = list(data.get("points") or [])
    replaced = {p.get("name") for p in own if isinstance(p, dict)}
    # The template's own point models, not copies: they are frozen, so every device of the
    # same meter shares one set (about 40 kB a 32-point device otherwise, for the process's
    # life).
    merged: list[Any] = [
        p for p in template.points if p.name not in replaced and p.name not in drop
    ]
    expanded = dict(data)
    expanded["points"] = merged + own
    expanded.setdefault("max_block", template.max_block)
    if "max_gap" in template.model_fields_set:
        # A template that says nothing of gaps leaves the driver to learn them.
        expanded.setdefault("max_gap", template.max_gap)
    return expanded
