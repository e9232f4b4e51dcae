"""Load a YAML config file into a :class:`GatewayConfig`, or fail with errors that name the
file, line and key path of every mistake and say what is allowed there.

Whatever the file holds, the outcome is a config or a :class:`ConfigError`, never another
exception: the file's size, its nesting, what its aliases expand to and its YAML tags are all
bounded before the models see it."""

from __future__ import annotations

import json
import os
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

from gateway.config.fields import DeviceBase, sharing_context
from gateway.config.model import GatewayConfig
from gateway.config.source import MAX_FILE_BYTES, read_config_text, too_large
from gateway.errors import ConfigError
from gateway.quantities import brief

KeyPath = tuple[str | int, ...]

#: A config nests 6 levels deep (devices[0].points[0].name). The cap keeps PyYAML's recursive
#: composer, this reader and pydantic far from Python's recursion limit.
MAX_DEPTH = 32
#: Values in the document, an alias counted each time it is used: a few lines of nested
#: aliases ("billion laughs") would otherwise expand to 10^9 values and exhaust memory.
MAX_VALUES = 500_000
#: The systemd unit's StateDirectory= (systemd/fieldgate.service): with ProtectSystem=strict,
#: the only directory the service may write.
STATE_DIRECTORY = Path("/var/lib/fieldgate")

_YAML = "tag:yaml.org,2002:"
#: The tags a value may have, explicit or resolved: plain data. Anything else (!!python/...,
#: !!binary, !!set, a local !tag) is refused rather than guessed at.
_SCALAR_TAGS = frozenset(
    _YAML + name for name in ("str", "int", "float", "bool", "null", "timestamp")
)
_ALLOWED_TAGS = "!!str, !!int, !!float, !!bool and !!null"


@dataclass(frozen=True, slots=True)
class Located:
    """The plain data of a YAML document and the line (1-based) of every key path in it."""

    data: Any
    lines: dict[KeyPath, int]


def load_config(path: Path) -> GatewayConfig:
    """Read and validate ``path``. Raises :class:`ConfigError` listing every mistake found."""
    return parse_config(read_config_text(path), source=str(path))


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    return validate_document(read_document(text, source), source)


def read_document(text: str, source: str = "<config>") -> Located:
    """``text`` composed into plain data (and the line of every key path), with what YAML
    itself can get wrong (syntax, size, nesting, tags) raised as :class:`ConfigError`."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError([too_large(source)])
    located = _compose(text, source)
    if not isinstance(located.data, dict):
        raise ConfigError(
            [f"{source}:1: the file must be a YAML mapping with gateway, mqtt, buses and devices"]
        )
    return located


def validate_document(located: Located, source: str = "<config>") -> GatewayConfig:
    """The config a document holds, or :class:`ConfigError` naming the line of each mistake."""
    try:
        config = GatewayConfig.model_validate(located.data, context=sharing_context())
    except ValidationError as exc:
        problems = [_describe(error, located, source) for error in exc.errors(include_url=False)]
        raise ConfigError(problems) from None
    references = config.reference_problems()
    if references:
        raise ConfigError(
            [_at(source, located, loc, f"{_dotted(loc)}: {message}") for loc, message in references]
        )
    return config


def config_warnings(config: GatewayConfig, path: Path) -> list[str]:
    """What is valid but will not work under the systemd unit, one line each in the format of
    the errors (``fieldgate check`` prints them; the config is still accepted)."""
    warnings: list[str] = []
    buffer_path = config.buffer.path
    # The unit starts in / (systemd's default WorkingDirectory), so a relative path is under /.
    seen_by_unit = Path(os.path.normpath(Path("/") / buffer_path))
    if not seen_by_unit.is_relative_to(STATE_DIRECTORY) or seen_by_unit == STATE_DIRECTORY:
        relative = "" if buffer_path.is_absolute() else f" (for the unit: {seen_by_unit})"
        warnings.append(
            _warning_at(
                path,
                ("buffer", "path"),
                f"buffer.path: {buffer_path}{relative} is outside {STATE_DIRECTORY}, which the "
                f"systemd unit cannot write; put the buffer under {STATE_DIRECTORY}/",
            )
        )
    return warnings


def _warning_at(path: Path, loc: KeyPath, message: str) -> str:
    # The config was valid a moment ago, so this read succeeds but for a race with an editor:
    # then the warning goes without its line rather than not at all.
    try:
        located = _compose(read_config_text(path), str(path))
    except ConfigError:
        return f"{path}: warning: {message}"
    return _at(str(path), located, loc, f"warning: {message}")


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors and for ``fieldgate schema``."""
    schema = GatewayConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fieldgate configuration"
    return schema


def config_json_schema_text() -> str:
    return json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _Mark:
    """:class:`yaml.Mark` in slots. PyYAML gives every token, event and node two marks of its
    own (about 330 bytes each with its instance dict); a site of 100 meters of 30 points has
    some 70 000 of them alive while the file is composed, and the process keeps that high-water
    mark of memory for its life. Same fields and methods, a quarter of the size."""

    __slots__ = ("buffer", "column", "index", "line", "name", "pointer")

    def __init__(  # noqa: PLR0917 - yaml.Mark's signature
        self, name: str, index: int, line: int, column: int, buffer: str | None, pointer: int | None
    ) -> None:
        self.name = name
        self.index = index
        self.line = line
        self.column = column
        self.buffer = buffer
        self.pointer = pointer

    get_snippet = yaml.Mark.get_snippet
    __str__ = yaml.Mark.__str__


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with its nesting capped while composing (its composer recurses once
    per level, so 5 000 levels would end in RecursionError), and with ``=``, ``<<`` and ``!``
    read as text: their YAML 1.1 meanings (value and merge keys, a tag) have no constructor in
    the safe loader, which would raise instead of returning a value."""

    # PyYAML reads it from the class; its stubs declare an instance variable, hence no ClassVar.
    yaml_implicit_resolvers: dict[Any, Any] = {  # noqa: RUF012
        first: [
            (tag, pattern)
            for tag, pattern in resolvers
            if tag not in {_YAML + "value", _YAML + "merge", _YAML + "yaml"}
        ]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def get_mark(self) -> yaml.Mark:
        # As yaml.Reader.get_mark, in slots (see _Mark); a text stream keeps its buffer.
        buffer, pointer = (self.buffer, self.pointer) if self.stream is None else (None, None)
        return _Mark(self.name, self.index, self.line, self.column, buffer, pointer)  # type: ignore[return-value]

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
            raise _TooDeep(event.start_mark.line + 1)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _too_deep(source: str, line: int) -> ConfigError:
    return ConfigError(
        [
            f"{source}:{line}: nested deeper than {MAX_DEPTH} levels (aliases counted as "
            "expanded); a config needs 6 (devices[0].points[0].name)"
        ]
    )


def _compose(text: str, source: str) -> Located:
    try:
        root = yaml.compose(text, Loader=_Loader)
    except _TooDeep as exc:
        raise _too_deep(source, exc.line) from None
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
    try:
        data = composer.read(root, ())
    finally:
        composer.close()
    if composer.problems:
        raise ConfigError(composer.problems)
    return Located(data, composer.lines)


class _NodeReader:
    """Turns a composed YAML node tree into plain data, noting the line of every key path and
    refusing duplicate keys (which PyYAML would silently resolve to the last one), tags other
    than plain data's, and documents that aliases make too deep or too large."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[str] = []
        self._scalars = yaml.SafeLoader("")
        self._values = 0

    def close(self) -> None:
        """Let the node tree go now: the scalar constructor keeps every node it built a value
        from, in a loader whose own reference cycles would hold the whole tree (tens of MB
        for a large site) until a full garbage collection, long after the config models were
        allocated between its pieces."""
        self._scalars.constructed_objects.clear()
        self._scalars.dispose()

    def read(self, node: yaml.Node, path: KeyPath) -> Any:
        line = node.start_mark.line + 1
        self._count(line, path)
        if len(path) > MAX_DEPTH:
            # The composer capped the nesting as written; aliases inside aliases (or one inside
            # itself) can still build deeper data.
            raise _too_deep(self.source, line)
        self.lines.setdefault(path, line)
        if isinstance(node, yaml.MappingNode):
            if node.tag != _YAML + "map":
                return self._refuse_tag(node, path)
            return self._read_mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _YAML + "seq":
                return self._refuse_tag(node, path)
            return [self.read(item, (*path, index)) for index, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _count(self, line: int, path: KeyPath) -> None:
        self._values += 1
        if self._values > MAX_VALUES:
            # The line is where the value was written; with aliases, the path says where it
            # was being used.
            where = _dotted(path) or "top level"
            raise ConfigError(
                [
                    f"{self.source}:{line}: {where}: the file holds more than {MAX_VALUES} "
                    "values, each alias counted as often as it is used; write the config out "
                    "without aliases of aliases"
                ]
            )

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in _SCALAR_TAGS:
            return self._refuse_tag(node, path)
        try:
            return self._scalars.construct_object(node, deep=True)
        except Exception:  # noqa: BLE001 - PyYAML raises what the conversion raised: ValueError
            # for `!!int abc` or 2026-13-45, KeyError for `!!bool maybe`, IndexError for an empty
            # `!!int`. Whichever it is, this one value cannot be read.
            self._problem(
                node,
                path,
                f"{brief(node.value)} is not a valid YAML {_shown_tag(node.tag)}; correct it, or "
                "quote it (without a tag) if it is text",
            )
            return None

    def _refuse_tag(self, node: yaml.Node, path: KeyPath) -> None:
        self._problem(
            node,
            path,
            f"the YAML tag {_shown_tag(node.tag)} is not allowed; write the value without it "
            f"(allowed: {_ALLOWED_TAGS})",
        )

    def _problem(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        where = _dotted(path) or "top level"
        self.problems.append(f"{self.source}:{node.start_mark.line + 1}: {where}: {message}")

    def _read_mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._read_key(key_node, path)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in mapping:
                first = self.lines[(*path, key)]
                self.problems.append(
                    f"{self.source}:{line}: {_dotted((*path, key))}: key appears twice "
                    f"(first on line {first}); keep one"
                )
            else:
                self.lines[(*path, key)] = line
                mapping[key] = self.read(value_node, (*path, key))
        return mapping

    def _read_key(self, node: yaml.Node, path: KeyPath) -> str | None:
        """The key as text, or ``None`` once the reason it is not has been reported."""
        line = node.start_mark.line + 1
        self._count(line, path)
        where = _dotted(path) or "top level"
        if not isinstance(node, yaml.ScalarNode):
            # Not constructed at all: a key that is a mapping or a list (or an alias of one)
            # is refused as it stands, whatever it would expand to.
            kind = "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
            self.problems.append(f"{self.source}:{line}: {where}: key must be text, not {kind}")
            return None
        reported = len(self.problems)
        key = self._scalar(node, path)
        if len(self.problems) > reported:
            return None
        if not isinstance(key, str):
            self.problems.append(f"{self.source}:{line}: {where}: key {brief(key)} must be text")
            return None
        return key


def _describe(error: ErrorDetails, located: Located, source: str) -> str:
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
        quiet = isinstance(given, dict | list) or repr(given) in text or brief(given) in text
        shown = "" if quiet else f" (got {brief(given)})"
        message = f"{where}: {text}{shown}"
    return _at(source, located, loc, message)


def _at(source: str, located: Located, loc: KeyPath, message: str) -> str:
    """Prefix ``message`` with the file and the line of ``loc``, or of its nearest ancestor
    present in the file (a missing key is reported at the mapping that lacks it)."""
    for end in range(len(loc), -1, -1):
        line = located.lines.get(loc[:end])
        if line is not None:
            return f"{source}:{line}: {message}"
    return f"{source}: {message}"


def _shown_tag(tag: str) -> str:
    """A tag as written: ``!!int`` for YAML's own, else as it is (``!foo``)."""
    shown = "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag
    return shown if len(shown) <= 60 else shown[:50] + "…"


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
