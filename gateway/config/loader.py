"""Load a YAML config file into a :class:`GatewayConfig`, or fail with errors that name the
file, line and key path of every mistake and say what is allowed there."""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Tag, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from gateway.config.fields import DeviceBase
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class _Located:
    """The plain data of a YAML document and the line (1-based) of every key path in it."""

    data: Any
    lines: dict[KeyPath, int]


def load_config(path: Path) -> GatewayConfig:
    """Read and validate ``path``. Raises :class:`ConfigError` listing every mistake found."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not a UTF-8 text file ({exc.reason})"]) from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    located = _compose(text, source)
    if not isinstance(located.data, dict):
        raise ConfigError(
            [f"{source}:1: the file must be a YAML mapping with gateway, mqtt, buses and devices"]
        )
    try:
        config = GatewayConfig.model_validate(located.data)
    except ValidationError as exc:
        problems = [_describe(error, located, source) for error in exc.errors(include_url=False)]
        raise ConfigError(problems) from None
    references = config.reference_problems()
    if references:
        raise ConfigError(
            [_at(source, located, loc, f"{_dotted(loc)}: {message}") for loc, message in references]
        )
    return config


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors and for ``fieldgate schema``."""
    schema = GatewayConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fieldgate configuration"
    return schema


def config_json_schema_text() -> str:
    return json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"


def _compose(text: str, source: str) -> _Located:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{mark.line + 1}" if mark else "?"
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            [f"{source}:{line}: YAML syntax error: {what}. Check indentation, colons and quotes"]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: YAML syntax error: {exc}"]) from None
    if root is None:
        raise ConfigError([f"{source}:1: the file is empty"])
    composer = _NodeReader(source)
    data = composer.read(root, ())
    if composer.problems:
        raise ConfigError(composer.problems)
    return _Located(data, composer.lines)


class _NodeReader:
    """Turns a composed YAML node tree into plain data, noting the line of every key path and
    refusing duplicate keys (which PyYAML would silently resolve to the last one)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[str] = []
        self._scalars = yaml.SafeLoader("")

    def read(self, node: yaml.Node, path: KeyPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._read_mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.read(item, (*path, index)) for index, item in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)

    def _read_mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._scalars.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                where = _dotted(path) or "top level"
                self.problems.append(f"{self.source}:{line}: {where}: key {key!r} must be text")
            elif key in mapping:
                first = self.lines[(*path, key)]
                self.problems.append(
                    f"{self.source}:{line}: {_dotted((*path, key))}: key appears twice "
                    f"(first on line {first}); keep one"
                )
            else:
                self.lines[(*path, key)] = line
                mapping[key] = self.read(value_node, (*path, key))
        return mapping


def _describe(error: ErrorDetails, located: _Located, source: str) -> str:
    loc, holder = _walk(error["loc"], located.data)
    where = _dotted(loc) or "top level"
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        allowed = _keys_of(holder)
        key = str(loc[-1])
        hint = ""
        if allowed:
            close = get_close_matches(key, allowed, n=1)
            if close:
                hint = f"; did you mean {close[0]!r}?"
            elif holder is not None and issubclass(holder, DeviceBase):
                # Likely a key of another kind of device: say which kind this one is, and why.
                hint = f" for a device on a {_bus_type(loc[:-1], located.data)} bus."
            else:
                hint = "."
            hint += f" Allowed keys here: {', '.join(allowed)}"
        message = f"{where}: unknown key {key!r}{hint}"
    elif kind == "missing":
        message = f"{where}: required key {str(loc[-1])!r} is missing"
    elif kind in ("enum", "literal_error"):
        expected = error.get("ctx", {}).get("expected", "")
        message = f"{where}: {given!r} is not one of {_plain_choices(expected)}"
    elif kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        loc = (*loc, "type")
        tag, expected = ctx.get("tag"), _plain_choices(ctx.get("expected_tags", ""))
        message = f"{_dotted(loc)}: {tag!r} is not one of {expected}"
    else:
        text = error["msg"].removeprefix("Value error, ")
        quiet = isinstance(given, dict | list) or repr(given) in text
        shown = "" if quiet else f" (got {given!r})"
        message = f"{where}: {text}{shown}"
    return _at(source, located, loc, message)


def _at(source: str, located: _Located, loc: KeyPath, message: str) -> str:
    """Prefix ``message`` with the file and the line of ``loc``, or of its nearest ancestor
    present in the file (a missing key is reported at the mapping that lacks it)."""
    for end in range(len(loc), -1, -1):
        line = located.lines.get(loc[:end])
        if line is not None:
            return f"{source}:{line}: {message}"
    return f"{source}: {message}"


def _dotted(loc: KeyPath) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _plain_choices(expected: str) -> str:
    return expected.replace("'", "")


def _walk(loc: tuple[int | str, ...], data: Any) -> tuple[KeyPath, type[BaseModel] | None]:
    """The key path of an error as the file has it, and the model of the mapping that holds its
    last key (``None`` if not a model).

    Pydantic puts the tag of the union member it validated into error paths (a bus's
    ``modbus_tcp``, a device's ``HostDevice``); the file has no such level, so it is dropped,
    and it tells which member's keys were allowed there."""
    annotation: Any = GatewayConfig
    node = data
    path: list[str | int] = []
    holder: type[BaseModel] | None = None
    for part in loc:
        members = list(_members(annotation))
        if isinstance(part, str):
            # Only a union (or an annotated type) has tags here; inside a model, every part is
            # a key, even one spelled like a tag (a `host` key on a `host` bus).
            tagged = [m for m, tags in members if part in tags and not isinstance(annotation, type)]
            if tagged:
                annotation = tagged[0]
                continue
            models = [m for m, _ in members if isinstance(m, type) and issubclass(m, BaseModel)]
            holder = models[0] if len(models) == 1 else None
            field = _field_of(holder, part) if holder is not None else None
            annotation = field.annotation if field is not None else None
        else:  # an index into a list: the list's item type
            holder = None
            args = typing.get_args(_unwrap(annotation))
            annotation = args[0] if args else None
        path.append(part)
        node = _child(node, part)
    return tuple(path), holder


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict) and isinstance(part, str):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _bus_type(device_loc: KeyPath, data: Any) -> str:
    """The ``type`` of the bus that the device at ``device_loc`` names, as written."""
    device: Any = data
    for part in device_loc:
        device = _child(device, part)
    bus = _child(device, "bus")
    buses = _child(data, "buses")
    for candidate in buses if isinstance(buses, list) else []:
        if _child(candidate, "name") == bus:
            return str(_child(candidate, "type"))
    return "?"


def _keys_of(model: type[BaseModel] | None) -> list[str]:
    """Keys (as written in YAML) of ``model`` (empty if not known)."""
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _field_of(model: type[BaseModel], key: str) -> FieldInfo | None:
    """The field that ``key`` (as written in YAML, so maybe an alias) sets."""
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _members(
    annotation: Any, tags: frozenset[str] = frozenset()
) -> Iterator[tuple[Any, frozenset[str]]]:
    """The members of a union (or the one type that is not a union), each with the tags that
    pick it: a :class:`Tag` on it, or the values of its ``type: Literal[...]`` field."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        tags |= {item.tag for item in metadata if isinstance(item, Tag)}
        yield from _members(base, tags)
    elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _members(arg)
    else:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            # A point's `type` (its value type) is plain data, not a tag: only a Literal is.
            field = annotation.model_fields.get("type")
            if field is not None and typing.get_origin(field.annotation) is Literal:
                tags |= {str(value) for value in typing.get_args(field.annotation)}
        yield annotation, tags


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation
